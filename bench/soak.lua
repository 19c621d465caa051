-- bench/soak.lua — wrk script of bench/soak.sh: a mix of reads and writes over SESSIONS sessions
-- (soak0..soakN-1, dim 16): 60 % queries (text, auto route), 15 % slot reads, 15 % event batches of 4
-- (text + string payload, every fifth with a slot write), 10 % slot overwrites (PUT, string payload).
-- Counts answers by status class; prints "soak: N answers, N 2xx, N 4xx, N 5xx" at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

function init(args)
  sessions = tonumber(args[1] or "8")
  math.randomseed(1000 + id)
  n2, n4, n5, n = 0, 0, 0, 0
  words = {"tower", "paris", "river", "bridge", "museum", "garden", "station", "market", "harbour", "castle"}
end

local function word() return words[math.random(#words)] end

function request()
  local s = "/v1/sessions/soak" .. math.random(0, sessions - 1)
  local r = math.random(100)
  local h = {["Content-Type"] = "application/json"}
  if r <= 60 then
    return wrk.format("POST", s .. "/query", h,
      '{"queries":[{"text":"' .. word() .. " " .. word() .. '"},{"text":"' .. word() .. '","route":"full"}]}')
  elseif r <= 75 then
    return wrk.format("GET", s .. "/slots/k" .. math.random(0, 15))
  elseif r <= 90 then
    local ev = {}
    for i = 1, 4 do
      local e = '{"text":"' .. word() .. " " .. word() .. '","payload":"' .. word() .. '"'
      if math.random(5) == 1 then e = e .. ',"slot":"k' .. math.random(0, 15) .. '"' end
      ev[i] = e .. "}"
    end
    return wrk.format("POST", s .. "/events", h, '{"events":[' .. table.concat(ev, ",") .. "]}")
  else
    return wrk.format("PUT", s .. "/slots/k" .. math.random(0, 15), h, '{"payload":"' .. word() .. '"}')
  end
end

function response(status, headers, body)
  n = n + 1
  if status >= 500 then
    n5 = n5 + 1
    if n5 == 1 then io.stderr:write("first 5xx: " .. status .. " " .. body:sub(1, 300) .. "\n") end
  elseif status >= 400 then
    n4 = n4 + 1
  else
    n2 = n2 + 1
  end
end

function done(summary, latency, requests)
  local t = {0, 0, 0, 0}
  for _, th in ipairs(threads) do
    t[1] = t[1] + th:get("n"); t[2] = t[2] + th:get("n2"); t[3] = t[3] + th:get("n4"); t[4] = t[4] + th:get("n5")
  end
  io.write(string.format("soak: %d answers, %d 2xx, %d 4xx, %d 5xx\n", t[1], t[2], t[3], t[4]))
  io.write(string.format("soak: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
