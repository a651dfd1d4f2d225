-- Shared part of the wrk scenario scripts (list.lua, get.lua, create.lua, update.lua, complete.lua,
-- mixed.lua, login.lua). Each scenario script loads this file and sets the global `request`.
--
--   wrk -t1 -c100 -d5s --timeout 10s -s bench/lua/list.lua http://127.0.0.1:8000 -- /tmp/x/data.lua [OFFSET]
--
-- The data file, written by bench/run.py, is a Lua chunk returning
--   { prefix = "", password = "...",
--     users = { { id = "...", name = "...", token = "...", tasks = { "<uuid>", ... } }, ... },
--     writers = { { id = "...", name = "...", token = "...", tasks = {} }, ... } }
-- An optional `list_query = "?sort_by=title&page=2"` is appended to the path of every `list` request
-- (bench/scale.py uses it for the sort orders and deep pages).
-- `create` adds tasks to the writers (users whose tasks nothing reads), so the task lists that the other
-- scenarios read do not grow with a server's create throughput; `mixed` creates for the users.
--
-- Every request takes the next user (and the next task) round-robin; each kind of request has its own
-- counter, starting at OFFSET (default 0; bench/run.py passes the number of requests earlier runs of the
-- same scenario made, so `complete` keeps alternating across runs) plus the wrk thread's number. Requests are pre-built in init() so
-- request() is a table look-up (plus a short concatenation for bodies that change).

local M = {}

-- setup/done run in wrk's main Lua state -------------------------------------------------------------

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

local function json_string(s)
  return '"' .. (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end)) .. '"'
end

function done(summary, latency, _)
  local non2xx, sample = 0, ""
  for _, t in ipairs(threads) do
    non2xx = non2xx + (t:get("non2xx") or 0)
    if sample == "" then sample = t:get("bad_sample") or "" end
  end
  local e, n = summary.errors, summary.requests
  local function pct(p) return n > 0 and latency:percentile(p) or 0 end
  io.write("BENCH_RESULT ", string.format(
    '{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"non2xx":%.0f,'
      .. '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},'
      .. '"latency_us":{"min":%.0f,"mean":%.1f,"max":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f},'
      .. '"sample":%s}\n',
    n, summary.duration, summary.bytes, non2xx,
    e.connect, e.read, e.write, e.status, e.timeout,
    n > 0 and latency.min or 0, n > 0 and latency.mean or 0, n > 0 and latency.max or 0,
    pct(50), pct(90), pct(99), pct(99.9), json_string(sample)))
end

-- everything below runs in each wrk thread's own Lua state -------------------------------------------

non2xx = 0       -- per thread, collected by done() through thread:get
bad_sample = ""  -- the first non-2xx status and the start of its body, for diagnosis

function response(status, _, body)
  if status < 200 or status > 299 then
    if non2xx == 0 then bad_sample = status .. " " .. string.sub(body or "", 1, 300) end
    non2xx = non2xx + 1
  end
end

local lists, gets, put_heads, complete_on, complete_off, create_heads, logins = {}, {}, {}, {}, {}, {}, {}
local writer_heads = {}
local n_users, n_tasks = 0, 0
local counters, first_index = {}, 0

local function next_index(kind)
  local i = counters[kind] or first_index
  counters[kind] = i + 1
  return i
end

local function with_body(head, body)
  return head .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body
end

function init(args)
  local data = dofile(assert(args[1], "usage: wrk ... -s <scenario>.lua <url> -- <data.lua>"))
  local host = wrk.headers["Host"] or (wrk.port and (wrk.host .. ":" .. wrk.port)) or wrk.host
  local function head(method, path, token)
    local s = method .. " " .. data.prefix .. path .. " HTTP/1.1\r\nHost: " .. host .. "\r\n"
    if token then s = s .. "Authorization: Bearer " .. token .. "\r\n" end
    return s
  end

  n_users = #data.users
  n_tasks = #data.users[1].tasks
  for u, user in ipairs(data.users) do
    local base = "/api/" .. user.id .. "/tasks"
    lists[u] = head("GET", base .. (data.list_query or ""), user.token) .. "\r\n"
    create_heads[u] = head("POST", base, user.token)
    logins[u] = with_body(head("POST", "/api/auth/login"),
      string.format('{"username":"%s","password":"%s"}', user.name, data.password))
  end
  for w, writer in ipairs(data.writers or data.users) do
    writer_heads[w] = head("POST", "/api/" .. writer.id .. "/tasks", writer.token)
  end
  -- slot k (0-based) is user k % n_users, task (k // n_users) % n_tasks: consecutive requests
  -- go to different users, and every task is visited once per pass
  for k = 0, n_users * n_tasks - 1 do
    local user = data.users[k % n_users + 1]
    local path = "/api/" .. user.id .. "/tasks/" .. user.tasks[math.floor(k / n_users) + 1]
    gets[k + 1] = head("GET", path, user.token) .. "\r\n"
    put_heads[k + 1] = head("PUT", path, user.token)
    local patch = head("PATCH", path .. "/complete", user.token)
    complete_on[k + 1] = with_body(patch, '{"completed":true}')
    complete_off[k + 1] = with_body(patch, '{"completed":false}')
  end
  first_index = (tonumber(args[2]) or 0) + (thread_id or 0)
end

function M.list()
  return lists[next_index("list") % n_users + 1]
end

function M.get()
  return gets[next_index("get") % #gets + 1]
end

local function create_body(i)
  return '{"title":"bench task ' .. i .. '","description":"created by the benchmark"}'
end

-- the `create` scenario: new tasks for the writers
function M.create()
  local i = next_index("create")
  return with_body(writer_heads[i % #writer_heads + 1], create_body(i))
end

-- the creates within `mixed`: new tasks for the users, as real traffic would
function M.create_for_user()
  local i = next_index("create_for_user")
  return with_body(create_heads[i % n_users + 1], create_body(i))
end

-- the title changes on every request, so no update is a no-op that a server could skip
function M.update()
  local i = next_index("update")
  return with_body(put_heads[i % #put_heads + 1],
    '{"title":"bench update ' .. i .. '","description":"updated by the benchmark","completed":false}')
end

-- `completed` flips on every pass over the tasks (true first: seeded and updated tasks are open)
function M.complete()
  local i = next_index("complete")
  local slots = (math.floor(i / #complete_on) % 2 == 0) and complete_on or complete_off
  return slots[i % #slots + 1]
end

function M.login()
  return logins[next_index("login") % n_users + 1]
end

return M
