-- GET and PUT over a key space: wrk -s kv.lua URL -- READ_PERCENT KEYS [READ_QUERY]
--   READ_PERCENT 100 = every request reads key 0; 0 = every request writes; else a random mix.
--   KEYS: writes cycle through /v2/keys/bench/k0 .. k(KEYS-1) with 32-byte values.
--   READ_QUERY: appended to every read's path, e.g. "?quorum=true" (default: nothing).
local report = require("report")

local read_percent, keys = 100, 1
local counter = 0
local get_request
local put_headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local put_body = "value=" .. string.rep("v", 32)

function init(args)
  read_percent = tonumber(args[1] or "100")
  keys = tonumber(args[2] or "1")
  get_request = wrk.format("GET", "/v2/keys/bench/k0" .. (args[3] or ""))
  math.randomseed(os.time())
end

function request()
  if read_percent >= 100 or (read_percent > 0 and math.random(100) <= read_percent) then
    return get_request
  end
  counter = counter + 1
  return wrk.format("PUT", "/v2/keys/bench/k" .. (counter % keys), put_headers, put_body)
end

done = report.done
