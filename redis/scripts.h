/*
 * The Lua scripts of libctpool-redis. Each runs atomically in Redis, so a
 * job's record, its stream entry and its place among the delayed jobs never
 * disagree. Every script gets the namespace as ARGV[1] and builds its keys
 * from it (this layer targets one Redis server, not Redis Cluster).
 *
 * A job's record, <ns>:job:<id> (a hash):
 *   kind, payload, key   as submitted
 *   state                1 queued, 2 running, 3 done, 4 cancelled, 5 dead
 *   status               fn's return value, or why it never ran
 *   attempts             deliveries so far (START adds one)
 *   node                 the node that runs or ran it ("" if none)
 *   entry                its current stream entry ("" while delayed)
 *   deadline             Redis time (ms) when its timeout passes, 0 = none
 *   cancel               "1" once a cancel reached it while it ran
 *   cby:<call>           the answer of the cancel whose tag is <call>,
 *                        when it ended or stopped the job (that cancel
 *                        retried after a lost reply answers the same)
 *   output               what it wrote
 *
 * Fencing: a node's writes about a job it runs (FINISH, HANDBACK, HEARTBEAT)
 * change something only while state, attempts, node and entry are still
 * what its START saw; once another node's START (after XAUTOCLAIM) or a
 * hand-back has moved the job on, the old node's writes do nothing.
 */
#ifndef CTP_REDIS_SCRIPTS_H
#define CTP_REDIS_SCRIPTS_H

/* Shared by every script: Redis's clock in ms, and a job's end (state,
 * status, expiry of the record and of its idempotency key, the end's
 * announcement). */
#define CTP_LUA_PRELUDE \
"local function now_ms()\n" \
"  local t = redis.call('TIME')\n" \
"  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n" \
"end\n" \
"local function job_end(ns, id, jk, state, status, ttl)\n" \
"  redis.call('HSET', jk, 'state', state, 'status', status)\n" \
"  redis.call('PEXPIRE', jk, ttl)\n" \
"  local key = redis.call('HGET', jk, 'key')\n" \
"  if key and key ~= '' then\n" \
"    redis.call('PEXPIRE', ns .. ':key:' .. key, ttl)\n" \
"  end\n" \
"  redis.call('PUBLISH', ns .. ':end:' .. id, state)\n" \
"end\n" \
"local function drop(q, entry)\n" \
"  redis.call('XACK', q, 'nodes', entry)\n" \
"  redis.call('XDEL', q, entry)\n" \
"end\n" \
"local function held(q, entry, node)\n" \
"  return #redis.call('XPENDING', q, 'nodes', entry, entry, 1, node) == 1\n" \
"end\n"

/* SUBMIT ns id kind payload delay_ms timeout_ms key
 * -> the job's id: this one, or the one its key already names. A retried
 * submit (same id, reply lost) finds its record and stores nothing. */
#define CTP_LUA_SUBMIT CTP_LUA_PRELUDE \
"local ns, id, kind = ARGV[1], ARGV[2], ARGV[3]\n" \
"local jk = ns .. ':job:' .. id\n" \
"if redis.call('EXISTS', jk) == 1 then return id end\n" \
"local key = ARGV[7]\n" \
"if key ~= '' then\n" \
"  local old = redis.call('GET', ns .. ':key:' .. key)\n" \
"  if old and redis.call('EXISTS', ns .. ':job:' .. old) == 1 then\n" \
"    return old\n" \
"  end\n" \
"end\n" \
"local now = now_ms()\n" \
"local delay, timeout = tonumber(ARGV[5]), tonumber(ARGV[6])\n" \
"local deadline = 0\n" \
"if timeout > 0 then deadline = now + timeout end\n" \
"redis.call('HSET', jk, 'kind', kind, 'state', 1, 'status', 0,\n" \
"  'attempts', 0, 'node', '', 'payload', ARGV[4], 'deadline', deadline,\n" \
"  'key', key, 'entry', '', 'cancel', '0')\n" \
"if key ~= '' then redis.call('SET', ns .. ':key:' .. key, id) end\n" \
"if delay > 0 then\n" \
"  redis.call('ZADD', ns .. ':delayed:' .. kind, now + delay, id)\n" \
"  redis.call('PUBLISH', ns .. ':wake', kind)\n" \
"else\n" \
"  local e = redis.call('XADD', ns .. ':q:' .. kind, '*', 'id', id)\n" \
"  redis.call('HSET', jk, 'entry', e)\n" \
"end\n" \
"return id\n"

/* A queued job whose deadline has passed ends here (cancelled, -ETIMEDOUT);
 * STATUS, CANCEL and START call it first. ETIMEDOUT is 110 on Linux. */
#define CTP_LUA_LAZY_TIMEOUT \
"local function lazy_timeout(ns, id, jk, ttl)\n" \
"  local f = redis.call('HMGET', jk, 'state', 'deadline', 'kind', 'entry')\n" \
"  local dl = tonumber(f[2])\n" \
"  if tonumber(f[1]) == 1 and dl > 0 and now_ms() >= dl then\n" \
"    redis.call('ZREM', ns .. ':delayed:' .. f[3], id)\n" \
"    if f[4] ~= '' then redis.call('XDEL', ns .. ':q:' .. f[3], f[4]) end\n" \
"    job_end(ns, id, jk, 4, -110, ttl)\n" \
"  end\n" \
"end\n"

/* STATUS ns id ttl -> {state, status, attempts, node, output, rem} or -2
 * (unknown); rem: ms until a queued job's deadline, -1 when none. */
#define CTP_LUA_STATUS CTP_LUA_PRELUDE CTP_LUA_LAZY_TIMEOUT \
"local ns, id = ARGV[1], ARGV[2]\n" \
"local jk = ns .. ':job:' .. id\n" \
"if redis.call('EXISTS', jk) == 0 then return -2 end\n" \
"lazy_timeout(ns, id, jk, tonumber(ARGV[3]))\n" \
"local f = redis.call('HMGET', jk, 'state', 'status', 'attempts', 'node',\n" \
"  'output', 'deadline')\n" \
"local rem = -1\n" \
"if tonumber(f[1]) == 1 and tonumber(f[6]) > 0 then\n" \
"  rem = tonumber(f[6]) - now_ms()\n" \
"end\n" \
"return {tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), f[4], f[5] or '',\n" \
"  rem}\n"

/* CANCEL ns id ttl call -> 0 (it had not started: cancelled), 1 (it runs:
 * the cancel is stored, then announced), 2 (it had ended), -2 (unknown).
 * call is the caller's own random tag for this cancel: the answer is kept
 * in the record (field cby:<call>), one field per call so that concurrent
 * cancels keep theirs, and the same call retried after a lost reply gets
 * the same answer, not 2 for the end it made itself. */
#define CTP_LUA_CANCEL CTP_LUA_PRELUDE CTP_LUA_LAZY_TIMEOUT \
"local ns, id, ttl, call = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]\n" \
"local jk = ns .. ':job:' .. id\n" \
"if redis.call('EXISTS', jk) == 0 then return -2 end\n" \
"local by = redis.call('HGET', jk, 'cby:' .. call)\n" \
"if by then return tonumber(by) end\n" \
"lazy_timeout(ns, id, jk, ttl)\n" \
"local f = redis.call('HMGET', jk, 'state', 'kind', 'entry')\n" \
"local state = tonumber(f[1])\n" \
"if state == 1 then\n" \
"  redis.call('ZREM', ns .. ':delayed:' .. f[2], id)\n" \
"  if f[3] ~= '' then redis.call('XDEL', ns .. ':q:' .. f[2], f[3]) end\n" \
"  redis.call('HSET', jk, 'cby:' .. call, '0')\n" \
"  job_end(ns, id, jk, 4, -125, ttl)\n" \
"  return 0\n" \
"elseif state == 2 then\n" \
"  redis.call('HSET', jk, 'cancel', '1', 'cby:' .. call, '1')\n" \
"  redis.call('PUBLISH', ns .. ':cancel', id)\n" \
"  return 1\n" \
"end\n" \
"return 2\n"

/* START ns id kind entry node max_deliveries ttl
 * -> {1, attempt, rem_ms (-1 = no deadline), payload}: run it now;
 *    {0}: do not (ended, cancelled, timed out, dead-lettered, or the entry
 *    is stale); the entry is acknowledged and deleted then. Also {0},
 *    changing nothing, when the entry is no longer pending under this node
 *    (a node that was away, whose delivery another node has taken over
 *    with XAUTOCLAIM, must neither start it nor drop it). */
#define CTP_LUA_START CTP_LUA_PRELUDE \
"local ns, id, kind, entry, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4],\n" \
"  ARGV[5]\n" \
"local maxd, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])\n" \
"local jk = ns .. ':job:' .. id\n" \
"local q = ns .. ':q:' .. kind\n" \
"if not held(q, entry, node) then return {0} end\n" \
"if redis.call('EXISTS', jk) == 0 then drop(q, entry) return {0} end\n" \
"local f = redis.call('HMGET', jk, 'state', 'attempts', 'deadline',\n" \
"  'entry', 'cancel')\n" \
"local state, attempts, dl = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])\n" \
"if f[4] ~= entry or (state ~= 1 and state ~= 2) then\n" \
"  drop(q, entry) return {0}\n" \
"end\n" \
"local now = now_ms()\n" \
"if f[5] == '1' then\n" \
"  drop(q, entry) job_end(ns, id, jk, 4, -125, ttl) return {0}\n" \
"end\n" \
"if dl > 0 and now >= dl then\n" \
"  drop(q, entry) job_end(ns, id, jk, 4, -110, ttl) return {0}\n" \
"end\n" \
"if attempts >= maxd then\n" \
"  drop(q, entry)\n" \
"  job_end(ns, id, jk, 5, -130, ttl)\n" \
"  redis.call('XADD', ns .. ':dead', 'MAXLEN', '~', 100000, '*',\n" \
"    'id', id, 'kind', kind)\n" \
"  return {0}\n" \
"end\n" \
"attempts = attempts + 1\n" \
"redis.call('HSET', jk, 'state', 2, 'attempts', attempts, 'node', node)\n" \
"local rem = -1\n" \
"if dl > 0 then rem = dl - now end\n" \
"return {1, attempts, rem, redis.call('HGET', jk, 'payload')}\n"

/* The fence: the job is still this node's run of this attempt. */
#define CTP_LUA_FENCE \
"local function ours(jk, attempt, node, entry)\n" \
"  local f = redis.call('HMGET', jk, 'state', 'attempts', 'node', 'entry')\n" \
"  return tonumber(f[1]) == 2 and tonumber(f[2]) == attempt and\n" \
"    f[3] == node and f[4] == entry\n" \
"end\n"

/* FINISH ns id kind entry node attempt state status output ttl
 * -> 1 written; 0 fenced out (the job moved on: nothing changes). */
#define CTP_LUA_FINISH CTP_LUA_PRELUDE CTP_LUA_FENCE \
"local ns, id, kind, entry, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4],\n" \
"  ARGV[5]\n" \
"local jk = ns .. ':job:' .. id\n" \
"if not ours(jk, tonumber(ARGV[6]), node, entry) then return 0 end\n" \
"redis.call('HSET', jk, 'output', ARGV[9])\n" \
"job_end(ns, id, jk, tonumber(ARGV[7]), tonumber(ARGV[8]),\n" \
"  tonumber(ARGV[10]))\n" \
"drop(ns .. ':q:' .. kind, entry)\n" \
"return 1\n"

/* HANDBACK ns id kind entry node attempt ttl
 * Gives a job back at once: a new entry at the end of its stream, the old
 * one acknowledged and deleted; the attempt stays counted. attempt 0: an
 * entry this node holds but never started (its record is queued, or
 * running on a node whose entry this node took over); then the entry must
 * still be pending under this node and still be the job's. A job whose
 * cancel is stored is not handed back: it ends there (cancelled,
 * -ECANCELED), as START would end it. -> 1 handed back (or ended by its
 * stored cancel); 0: fenced out or not ours (nothing changes), or, for
 * attempt 0, a stale entry or an ended job (the entry is acknowledged and
 * deleted). */
#define CTP_LUA_HANDBACK CTP_LUA_PRELUDE CTP_LUA_FENCE \
"local ns, id, kind, entry, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4],\n" \
"  ARGV[5]\n" \
"local attempt, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])\n" \
"local jk = ns .. ':job:' .. id\n" \
"local q = ns .. ':q:' .. kind\n" \
"local f = redis.call('HMGET', jk, 'state', 'entry', 'cancel')\n" \
"local state = tonumber(f[1])\n" \
"if attempt > 0 then\n" \
"  if not ours(jk, attempt, node, entry) then return 0 end\n" \
"elseif not held(q, entry, node) then\n" \
"  return 0\n" \
"elseif f[2] ~= entry or (state ~= 1 and state ~= 2) then\n" \
"  drop(q, entry)\n" \
"  return 0\n" \
"end\n" \
"drop(q, entry)\n" \
"if f[3] == '1' then\n" \
"  job_end(ns, id, jk, 4, -125, ttl)\n" \
"  return 1\n" \
"end\n" \
"local e = redis.call('XADD', q, '*', 'id', id)\n" \
"redis.call('HSET', jk, 'state', 1, 'node', '', 'entry', e)\n" \
"return 1\n"

/* HEARTBEAT ns node [kind id entry attempt]...
 * For each job this node runs: while it is still ours, its entry's idle
 * time is reset (XCLAIM to itself, JUSTID: the delivery count does not
 * move), so no other node takes it over. -> one answer per job: 1 ours,
 * 2 ours and a cancel is stored, 0 lost (another node has it, or it ended). */
#define CTP_LUA_HEARTBEAT CTP_LUA_PRELUDE CTP_LUA_FENCE \
"local ns, node = ARGV[1], ARGV[2]\n" \
"local res = {}\n" \
"for i = 3, #ARGV, 4 do\n" \
"  local kind, id, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]\n" \
"  local jk = ns .. ':job:' .. id\n" \
"  if ours(jk, tonumber(ARGV[i + 3]), node, entry) then\n" \
"    redis.call('XCLAIM', ns .. ':q:' .. kind, 'nodes', node, 0, entry,\n" \
"      'JUSTID')\n" \
"    if redis.call('HGET', jk, 'cancel') == '1' then\n" \
"      res[#res + 1] = 2\n" \
"    else\n" \
"      res[#res + 1] = 1\n" \
"    end\n" \
"  else\n" \
"    res[#res + 1] = 0\n" \
"  end\n" \
"end\n" \
"return res\n"

/* PROMOTE ns kind -> ms until the next delayed job of kind is due (-1: none).
 * Moves the due ones (100 at most per call) into the kind's stream. */
#define CTP_LUA_PROMOTE CTP_LUA_PRELUDE \
"local ns, kind = ARGV[1], ARGV[2]\n" \
"local z = ns .. ':delayed:' .. kind\n" \
"local now = now_ms()\n" \
"local due = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 100)\n" \
"for _, id in ipairs(due) do\n" \
"  redis.call('ZREM', z, id)\n" \
"  local jk = ns .. ':job:' .. id\n" \
"  if tonumber(redis.call('HGET', jk, 'state')) == 1 then\n" \
"    local e = redis.call('XADD', ns .. ':q:' .. kind, '*', 'id', id)\n" \
"    redis.call('HSET', jk, 'entry', e)\n" \
"  end\n" \
"end\n" \
"if #due == 100 then return 0 end\n" \
"local nx = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')\n" \
"if #nx == 0 then return -1 end\n" \
"local d = tonumber(nx[2]) - now\n" \
"if d < 0 then d = 0 end\n" \
"return d\n"

#endif /* CTP_REDIS_SCRIPTS_H */
