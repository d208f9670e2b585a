//! The Lua scripts run in Redis. Each runs atomically, so a counter and the
//! presence sets never see half of another node's change.
//!
//! Keys (see `wire`): `seq:<room>` a room's counter; `p:<room>` a hash of
//! user id → user JSON, the room's members; `pn:<room>\n<user>` the nodes
//! where that user is in that room; `nm:<node>` a node's memberships
//! (`<room>\n<user>`); `node:<node>` its heartbeat, with a TTL; `nodes` the
//! nodes that registered.

/// KEYS: counter. ARGV: count, floor. Returns the first seq reserved.
///
/// The floor lets a counter that Redis lost (restart without persistence,
/// eviction) resume above every seq the caller knows of.
pub const RESERVE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[2])
if cur < floor then cur = floor end
local last = cur + tonumber(ARGV[1])
redis.call('SET', KEYS[1], last)
return cur + 1
";

/// KEYS: members hash, user's node set, node's memberships, room channel.
/// ARGV: node, user id, user JSON, membership entry, join event.
/// Publishes the join event when this is the user's first node in the room.
pub const JOIN: &str = r"
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if redis.call('SCARD', KEYS[2]) == 1 then
  redis.call('PUBLISH', KEYS[4], ARGV[5])
  return 1
end
return 0
";

/// KEYS and ARGV as for JOIN, with the leave event. Publishes it when this
/// was the user's last node in the room.
pub const LEAVE: &str = r"
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('SCARD', KEYS[2]) == 0 and redis.call('HDEL', KEYS[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', KEYS[4], ARGV[5])
  return 1
end
return 0
";

/// KEYS: the nodes set. ARGV: key prefix. Removes every node whose
/// heartbeat expired, with its memberships, publishing a leave for each user
/// that had no other node in a room. Returns the number of nodes reaped.
pub const REAP: &str = r"
local prefix = ARGV[1]
local reaped = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. 'node:' .. node) == 0 then
    local nm = prefix .. 'nm:' .. node
    for _, entry in ipairs(redis.call('SMEMBERS', nm)) do
      local nl = string.find(entry, '\n', 1, true)
      local room = string.sub(entry, 1, nl - 1)
      local user = string.sub(entry, nl + 1)
      local pn = prefix .. 'pn:' .. entry
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
    redis.call('DEL', nm)
    redis.call('SREM', KEYS[1], node)
    reaped = reaped + 1
  end
end
return reaped
";
