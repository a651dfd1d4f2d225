-- login: POST /api/auth/login {"username", "password"} with the right password (bcrypt on the server)
local bench = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
request = bench.login
