-- wrk script for the per-session endpoints: each request names a session picked at random (uniformly) among the
-- ids in a file, one a line. Arguments after wrk's `--`:
--   IDS_FILE METHOD [SUFFIX [BODY]]
-- e.g. `-- ids.txt GET`, `-- ids.txt POST /heartbeat`, `-- ids.txt POST /messages '{"content":"hi"}'`,
-- `-- ids.txt GET /messages`. The path is /api/messaging/sessions/<id><SUFFIX>. A line `<id> <token>` (seed's
-- session-tokens.txt) sends that session's token as `Authorization: Bearer <token>` with each of its requests.

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
  local n = 0
  for line in io.lines(file) do
    if #line > 0 then
      n = n + 1
      local id, token = line:match("^(%S+)%s+(%S+)$")
      if id then
        ids[n] = id
        tokens[n] = "Bearer " .. token
      else
        ids[n] = line
      end
    end
  end
  if n == 0 then
    error("by_id.lua: no ids in " .. file)
  end
  -- Each thread its own sequence.
  math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
end

function request()
  local i = math.random(#ids)
  local id = ids[i]
  if tokens[i] then
    headers["Authorization"] = tokens[i]
  end
  return wrk.format(method, "/api/messaging/sessions/" .. id .. suffix, headers, body)
end
