-- get: GET /api/{user_id}/tasks/{task_id}
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.get
