-- create: POST /api/{user_id}/tasks {"title", "description"}
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.create
