-- complete: PATCH /api/{user_id}/tasks/{task_id}/complete {"completed": true|false}, alternating per pass
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.complete
