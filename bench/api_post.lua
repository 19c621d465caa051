-- bench/api_post.lua — wrk script: POSTs one fixed JSON body, read from the file named by the first
-- script argument (wrk -s bench/api_post.lua URL -- BODY_FILE), and prints "non200 N" at the end so
-- bench/api_bench.sh refuses to report a run with failed requests.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local body = f:read("*a")
  f:close()
  req = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  bad = 0
end

function request()
  return req
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad == 1 then io.stderr:write("first non-200 answer: " .. status .. " " .. body:sub(1, 300) .. "\n") end
  end
end

function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + (t:get("bad") or 0) end
  io.write(string.format("non200 %d\n", n))
end
