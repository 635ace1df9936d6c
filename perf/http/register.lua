-- wrk script: HTTP v1 registrations of distinct instances (Nacos OpenAPI), spread over
-- SERVICES services, each with two short metadata entries, stopping new registrations after
-- LIMIT per thread (later requests are cheap liveness GETs, excluded by the harness).
-- Usage: wrk -t2 -c64 -d30s -s register.lua http://127.0.0.1:8848 -- <services> <limit_per_thread> <offset> [lasting]
-- `lasting`: heartbeat timeouts of a day (preserved.*.timeout metadata), so the instances
-- outlive a measurement without beats.
local thread_counter = 0
function setup(thread)
  thread:set("tid", thread_counter)
  thread_counter = thread_counter + 1
end

function init(args)
  services = tonumber(args[1] or "10000")
  limit = tonumber(args[2] or "1000000000")
  offset = tonumber(args[3] or "0")
  n = 0
  meta = "%7B%22zone%22%3A%22z1%22%2C%22ver%22%3A%221.0%22%7D" -- {"zone":"z1","ver":"1.0"}
  if args[4] == "lasting" then
    meta = "%7B%22zone%22%3A%22z1%22%2C%22preserved.heart.beat.timeout%22%3A%2286400000%22%2C%22preserved.ip.delete.timeout%22%3A%2286400000%22%7D"
  end
end

function request()
  n = n + 1
  if n > limit then
    return wrk.format("GET", "/nacos/v1/ns/operator/metrics")
  end
  -- id is unique across threads and runs (offset), mapped to a distinct ip:port.
  local id = offset + tid * 100000000 + n
  local port = 1024 + (id % 50000)
  local host = math.floor(id / 50000)
  local ip = string.format("10.%d.%d.%d", math.floor(host / 65536) % 256, math.floor(host / 256) % 256, host % 256)
  local svc = id % services
  return wrk.format("POST", "/nacos/v1/ns/instance?serviceName=svc-" .. svc .. "&ip=" .. ip .. "&port=" .. port .. "&metadata=" .. meta)
end
