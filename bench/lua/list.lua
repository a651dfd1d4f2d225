-- list: GET /api/{user_id}/tasks, the first page in the default order (newest first)
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.list
