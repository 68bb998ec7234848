-- wrk script for the per-session endpoints: each request names a session picked at random (uniformly) among the
-- ids in a file, one a line. Arguments after wrk's `--`:
--   IDS_FILE METHOD [SUFFIX [BODY]]
-- e.g. `-- ids.txt GET`, `-- ids.txt POST /heartbeat`, `-- ids.txt POST /messages '{"content":"hi"}'`,
-- `-- ids.txt GET /messages`. The path is /api/messaging/sessions/<id><SUFFIX>. A line `<id> <token>` (seed's
-- session-tokens.txt) sends that session's token as `Authorization: Bearer <token>` with each of its requests.
--
-- A file of ids alone, all of one length (the scale run's million), is kept as the file's one string and each id
-- cut from it when drawn. Why: wrk runs each thread's `init` in turn, starting the thread as its `init` ends, and
-- starts the run's clock after the last one. Reading a million lines into a table made the second thread's `init`
-- long, and meanwhile the first thread's requests both counted (over a clock not yet running: an inflated rate)
-- and competed with it for the cores (a latency tail that was wrk's, not the server's).

local packed = nil
local width = 0
local count = 0
local ids = {}
local tokens = {}
local method = "GET"
local suffix = ""
local body = nil
local headers = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

-- Keeps the file's text as one string if every line is an id of the same length (no token), else returns false.
local function pack(all)
  local first = all:find("\n", 1, true)
  if first == nil or first < 2 or #all % first ~= 0 or all:find(" ", 1, true) then
    return false
  end
  -- Every line must end where the stride says, without making a string per line.
  for at = first, #all, first do
    if all:byte(at) ~= 10 then
      return false
    end
  end
  packed, width, count = all, first, #all / first
  return true
end

function init(args)
  local file = args[1]
  if file == nil then
    error("by_id.lua: give the ids file after --")
  end
  method = args[2] or "GET"
  suffix = args[3] or ""
  body = args[4]
  -- Headers given to wrk with -H (an X-API-KEY, say) go on every request too.
  for name, value in pairs(wrk.headers) do
    headers[name] = value
  end
  if body ~= nil then
    headers["Content-Type"] = "application/json"
  end
  -- Each thread its own sequence.
  math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
  local f = assert(io.open(file, "rb"))
  local all = f:read("*a")
  f:close()
  if pack(all) then
    return
  end
  local n = 0
  for line in all:gmatch("[^\n]+") do
    n = n + 1
    local id, token = line:match("^(%S+)%s+(%S+)$")
    if id then
      ids[n] = id
      tokens[n] = "Bearer " .. token
    else
      ids[n] = line
    end
  end
  if n == 0 then
    error("by_id.lua: no ids in " .. file)
  end
end

function request()
  if packed then
    local at = (math.random(count) - 1) * width
    local id = packed:sub(at + 1, at + width - 1)
    return wrk.format(method, "/api/messaging/sessions/" .. id .. suffix, headers, body)
  end
  local i = math.random(#ids)
  local id = ids[i]
  if tokens[i] then
    headers["Authorization"] = tokens[i]
  end
  return wrk.format(method, "/api/messaging/sessions/" .. id .. suffix, headers, body)
end
