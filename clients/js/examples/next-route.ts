// app/api/chat/token/route.ts: mints the short-lived token the browser uses
// to open its hubbub WebSocket. (An example for the Next.js app; it is not
// run by hubbub's tests.)
//
// Why a separate token instead of handing hubbub the NextAuth session:
// NextAuth keeps the session in a cookie that is an encrypted JWE, sealed
// with NEXTAUTH_SECRET and in a format private to NextAuth. For hubbub to
// read it, the chat server would need the app's session secret (which can
// forge or open any session, not just chat access) and would have to follow
// NextAuth's internal encoding from release to release. The cookie is also
// scoped to the app's domain and long-lived. Instead, the app, which already
// trusts the session, signs a small HS256 JWT with only what chat needs (who,
// display name, role, allowed rooms) and a lifetime of minutes, using a
// secret shared with hubbub alone (HUBBUB_JWT_SECRET, given to hubbub as
// --jwt-secret). A leaked chat token is worth five minutes of chat; the client
// asks for a fresh one on every reconnect.
//
// Needs: `npm install jose`. Works on the Node.js and the Edge runtime.

import { SignJWT } from 'jose';
import { getServerSession } from 'next-auth';
import { authOptions } from '@/lib/auth'; // the app's NextAuth options
// With Auth.js v5 instead: `import { auth } from '@/auth'` and
// `const session = await auth()`.

/** Token lifetime. Open connections outlive it; only (re)connects need one. */
const TOKEN_TTL_SECONDS = 5 * 60;

type Role = 'student' | 'teacher' | 'admin';

/** The session user as the app's NextAuth `session` callback shapes it
 * (NextAuth leaves out `id` and `role` unless the callback adds them). */
interface SessionUser {
  id?: string;
  name?: string | null;
  email?: string | null;
  role?: Role;
}

// Never cache a token response.
export const dynamic = 'force-dynamic';

export async function GET(): Promise<Response> {
  const secret = process.env.HUBBUB_JWT_SECRET;
  if (!secret) {
    return Response.json({ error: 'chat is not configured' }, { status: 500 });
  }

  const session = await getServerSession(authOptions);
  const user = session?.user as SessionUser | undefined;
  if (!user?.id) {
    return Response.json({ error: 'not signed in' }, { status: 401 });
  }

  const role: Role = user.role ?? 'student';
  const rooms = await chatRoomsFor(user.id, role);
  const expiresAt = Math.floor(Date.now() / 1000) + TOKEN_TTL_SECONDS;

  const token = await new SignJWT({
    name: user.name ?? undefined,
    role,
    rooms,
  })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(user.id)
    .setIssuedAt()
    .setExpirationTime(expiresAt)
    .sign(new TextEncoder().encode(secret));

  return Response.json(
    { token, expiresAt },
    { headers: { 'Cache-Control': 'no-store, private' } },
  );
}

/**
 * The rooms this user may join, as hubbub `rooms` claims: exact ids, or
 * prefixes ending in `*`. A pattern matches by plain prefix, so list
 * `course:42` and `course:42:*` rather than `course:42*`, which would also
 * match `course:420`.
 *
 * Replace the body with the app's enrolment lookup (Prisma, an API, ...).
 */
async function chatRoomsFor(userId: string, role: Role): Promise<string[]> {
  if (role === 'admin') return ['*'];
  const courseIds: string[] = await findCourseIdsForUser(userId);
  return courseIds.flatMap((id) => [`course:${id}`, `course:${id}:*`]);
}

// Stand-in for the app's data layer.
declare function findCourseIdsForUser(userId: string): Promise<string[]>;
