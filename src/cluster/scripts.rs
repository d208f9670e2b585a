//! The Lua scripts run in Redis. Each runs atomically, so a counter and the
//! presence sets never see half of another node's change.
//!
//! Keys (see `wire`): `seq:<room>` a room's counter; `p:<room>` a hash of
//! user id → user JSON, the room's members; `pn:<room>\n<user>` the nodes
//! where that user is in that room; `nr:<node>` the rooms where a node has
//! members and `nu:<node>\n<room>` those members; `node:<node>` its
//! heartbeat, with a TTL; `nodes` the nodes that registered.

/// KEYS: counter. ARGV: count, floor, jump. Returns the first seq reserved.
///
/// The floor is the highest seq the caller knows of. A counter that is
/// missing although the caller knows seqs was lost by Redis (a restart
/// without persistence, an eviction); other nodes may hold seqs above the
/// caller's floor, reserved and not yet stored, so the counter resumes
/// `jump` above the floor rather than at it. Receivers skip the unused
/// seqs after their gap wait.
pub const RESERVE: &str = r"
local floor = tonumber(ARGV[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  cur = tonumber(cur)
elseif floor > 0 then
  cur = floor + tonumber(ARGV[3])
else
  cur = 0
end
if cur < floor then cur = floor end
local last = cur + tonumber(ARGV[1])
redis.call('SET', KEYS[1], last)
return cur + 1
";

/// KEYS: members hash, user's node set, node's rooms, node's users in the
/// room, room channel, the nodes set. ARGV: node, user id, user JSON, room,
/// join event. Publishes the join event when this is the user's first node
/// in the room. Registers the node too, so that the reaper finds whatever
/// it registers even before its first heartbeat.
pub const JOIN: &str = r"
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if redis.call('SCARD', KEYS[2]) == 1 then
  redis.call('PUBLISH', KEYS[5], ARGV[5])
  return 1
end
return 0
";

/// KEYS and ARGV as for JOIN, with the leave event. Publishes it when this
/// was the user's last node in the room.
pub const LEAVE: &str = r"
redis.call('SREM', KEYS[4], ARGV[2])
if redis.call('SCARD', KEYS[4]) == 0 then redis.call('SREM', KEYS[3], ARGV[4]) end
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 and redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', KEYS[5], ARGV[5])
  return 1
end
return 0
";

/// The leave half shared by SYNC and REAP: `user` of `node` leaves `room`.
const FORGET: &str = r"
local function forget(prefix, node, room, user)
  local pn = prefix .. 'pn:' .. room .. '\n' .. user
  redis.call('SREM', pn, node)
  if redis.call('SCARD', pn) == 0 then
    local p = prefix .. 'p:' .. room
    local info = redis.call('HGET', p, user)
    if info then
      redis.call('HDEL', p, user)
      redis.call('PUBLISH', prefix .. 'r:' .. room, 'L' .. room .. '\n' .. info)
    end
  end
end
";

/// KEYS: none. ARGV: prefix, node, room, then pairs of user id and user
/// JSON: this node's members of the room now. Makes Redis agree, publishing
/// the joins and leaves that change the cluster's view (after an outage,
/// during which presence commands were lost).
pub fn sync() -> String {
    format!(
        "{FORGET}{}",
        r"
local prefix, node, room = ARGV[1], ARGV[2], ARGV[3]
redis.call('SADD', prefix .. 'nodes', node)
local nu = prefix .. 'nu:' .. node .. '\n' .. room
local want = {}
for i = 4, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
for _, user in ipairs(redis.call('SMEMBERS', nu)) do
  if not want[user] then
    redis.call('SREM', nu, user)
    forget(prefix, node, room, user)
  end
end
for user, info in pairs(want) do
  redis.call('SADD', nu, user)
  local pn = prefix .. 'pn:' .. room .. '\n' .. user
  redis.call('SADD', pn, node)
  local p = prefix .. 'p:' .. room
  if redis.call('HSET', p, user, info) == 1 then
    redis.call('PUBLISH', prefix .. 'r:' .. room, 'J' .. room .. '\n' .. info)
  end
end
local nr = prefix .. 'nr:' .. node
if next(want) then redis.call('SADD', nr, room) else redis.call('SREM', nr, room) end
return 0
"
    )
}

/// KEYS: the nodes set. ARGV: key prefix. Removes every node whose
/// heartbeat expired, with its memberships, publishing a leave for each user
/// that had no other node in a room. Returns the number of nodes reaped.
pub fn reap() -> String {
    format!(
        "{FORGET}{}",
        r"
local prefix = ARGV[1]
local reaped = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. 'node:' .. node) == 0 then
    -- First, so that every node starts catching up from the store before
    -- it shows the dead node's users leaving: what that node committed and
    -- acked but never published is in the store.
    redis.call('PUBLISH', prefix .. 'n', 'D' .. node)
    local nr = prefix .. 'nr:' .. node
    for _, room in ipairs(redis.call('SMEMBERS', nr)) do
      local nu = prefix .. 'nu:' .. node .. '\n' .. room
      for _, user in ipairs(redis.call('SMEMBERS', nu)) do
        forget(prefix, node, room, user)
      end
      redis.call('DEL', nu)
    end
    redis.call('DEL', nr)
    redis.call('SREM', KEYS[1], node)
    reaped = reaped + 1
  end
end
return reaped
"
    )
}
