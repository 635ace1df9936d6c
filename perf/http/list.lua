-- wrk script: /instance/list of one service (filled beforehand by the harness).
-- Usage: wrk -t2 -c64 -d10s -s list.lua http://127.0.0.1:8848 -- <serviceName>
function init(args)
  path = "/nacos/v1/ns/instance/list?serviceName=" .. (args[1] or "list-100")
end
function request()
  return wrk.format("GET", path)
end
