-- mixed: 60% list, 20% get, 10% create, 5% update, 5% complete, in a fixed cycle of 20 requests
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local cycle = {
  bench.list, bench.get, bench.list, bench.create_for_user, bench.list, bench.update, bench.list, bench.get,
  bench.list, bench.list, bench.complete, bench.list, bench.get, bench.list, bench.create_for_user, bench.list,
  bench.list, bench.get, bench.list, bench.list,
}
local i = 0

request = function()
  i = i + 1
  return cycle[(i - 1) % #cycle + 1]()
end
