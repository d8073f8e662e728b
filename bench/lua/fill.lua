-- Write COUNT distinct keys /v2/keys/fill/<n> (32-byte values), then exit:
--   wrk -t1 -d600s -s fill.lua URL -- COUNT
-- wrk's main thread sleeps for the whole -d duration, so the script ends the process itself once
-- COUNT writes have succeeded (exit status 0; the caller times it and prints no wrk summary). A
-- few more than COUNT keys may be written: the requests in flight when the last answer arrives.
-- A failed write (an etcd "request timed out" while it snapshots on a loaded machine) is not
-- counted and a further key is written instead; the count of failures goes to stderr. More than
-- COUNT/100 + 10 failures exit with status 3.
local count = 0
local sent, answered, failed = 0, 0, 0
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
local body = "value=" .. string.rep("v", 32)

function init(args)
  count = tonumber(args[1])
end

function request()
  sent = sent + 1
  return wrk.format("PUT", "/v2/keys/fill/" .. sent, headers, body)
end

function response(status, headers, body)
  if status >= 300 then
    failed = failed + 1
    io.stderr:write("fill: HTTP " .. status .. ": " .. body .. "\n")
    if failed > count / 100 + 10 then
      os.exit(3)
    end
    return
  end
  answered = answered + 1
  if answered >= count then
    if failed > 0 then
      io.stderr:write("fill: " .. failed .. " failed writes were replaced by others\n")
    end
    os.exit(0)
  end
end
