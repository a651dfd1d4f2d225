-- update: PUT /api/{user_id}/tasks/{task_id} {"title", "description", "completed"} (full replacement)
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.update
