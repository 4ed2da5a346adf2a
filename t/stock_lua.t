-- t/stock_lua.t -- `require "glia"` from a stock interpreter (lua5.4 or
-- luajit, whichever this build is for) once `glia --env` set LUA_PATH and
-- LUA_CPATH. A sanitizer build's module needs the ASan runtime loaded first,
-- which a stock interpreter does not do: those checks are skipped there.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local sh, sh_quote, skip_all = u.sh, u.sh_quote, u.skip_all

local root = u.root()
local interp = os.getenv("GLIA_TEST_LUA") or (jit and "luajit" or "lua5.4")
local module = root .. "/lib/lua/" .. (interp == "luajit" and "5.1" or "5.4") .. "/glia/core.so"

if select(2, sh("command -v " .. interp .. " >/dev/null")) ~= 0 then
  skip_all(interp .. " is not installed")
end
if (os.getenv("GLIA_TEST_SAN") or "") ~= "" or sh("ldd " .. sh_quote(module) .. " 2>/dev/null"):find("asan") then
  skip_all("a sanitizer build's module cannot load into a stock " .. interp)
end

local exe = u.exe()
local env = sh(sh_quote(exe) .. " --env")
t.ok(env:find("export LUA_PATH=") and env:find("export LUA_CPATH="),
     "glia --env prints LUA_PATH and LUA_CPATH exports")

-- Runs code under the stock interpreter from another directory, with only
-- the exports of glia --env telling it where glia lives.
local function stock(code)
  return sh("cd /tmp && unset LUA_PATH_5_4 LUA_CPATH_5_4 LUA_INIT LUA_INIT_5_4; eval "
            .. sh_quote(env) .. "; " .. interp .. " -e " .. sh_quote(code) .. " 2>&1")
end

local out, code = stock([[
local glia = require "glia"
local x = glia.tensor({{1, 2, 3}, {4, 5, 6}})
local y = x * 2 + 1
print(glia.version, y:dtype(), table.concat(y:size(), "x"), ("%g"):format(y[2][3]))
]])
t.is(out, glia.version .. "\tf32\t2x3\t13\n",
     interp .. " requires glia and computes with tensors through its own C API")
t.is(code, 0, interp .. " exits cleanly after using glia (the module closes with the state)")

out = stock([[print(package.searchpath("glia.core", package.cpath))]])
t.is(out, module .. "\n", interp .. " finds the module built for its ABI under lib/lua")

out = stock([[
local glia = require "glia"
local ok, err = pcall(glia.add, glia.tensor({1, 2, 3}), glia.tensor({1, 2}))
print(ok, err)
]])
t.ok(out:find("^false\t.-glia%.add.-do not broadcast"),
     "an op error in a stock interpreter is a catchable Lua error with the op's message")

out = stock([[
local nn = require "glia.nn"
local lin = nn.Linear(3, 4)
local ok, err = pcall(function() lin(require("glia").zeros(2, 5)) end)
print(err)
]])
t.ok(out:find("^%(command line%):3: glia%.linear: size mismatch"),
     "in a stock interpreter too, an nn module's error points at the caller's line, not the stdlib")

-- The stdlib's directory spelled two ways by a relative LUA_PATH (require
-- finds glia.nn through "./stdlib/?.lua", glia through "stdlib/?/init.lua"),
-- and a host that opens the core before package.path leads to the stdlib.
local lib = env:match("LUA_PATH='([^?']*)/%?%.lua")
local parent, base = lib:match("^(.*)/([^/]+)$")
local function stock_relative(code)
  local path = "./" .. base .. "/?.lua;" .. base .. "/?/init.lua;;"
  return sh("cd " .. sh_quote(parent) .. " && unset LUA_PATH_5_4 LUA_CPATH_5_4 LUA_INIT LUA_INIT_5_4; "
            .. "eval " .. sh_quote(env) .. "; LUA_PATH=" .. sh_quote(path) .. " " .. interp .. " -e "
            .. sh_quote(code) .. " 2>&1")
end
out = stock_relative([[
local lin = require("glia.nn").Linear(3, 4)
local ok, err = pcall(function() lin(require("glia").zeros(2, 5)) end)
print(err)
]])
t.ok(out:find("^%(command line%):2: glia%.linear: size mismatch"),
     "with the stdlib's directory spelled two ways in LUA_PATH, an nn error still blames the caller")
out = stock_relative([[
local path = package.path
package.path = ""
require "glia.core"
package.path = path
local lin = require("glia.nn").Linear(3, 4)
local ok, err = pcall(function() lin(require("glia").zeros(2, 5)) end)
print(err)
]])
t.ok(out:find("^%(command line%):6: glia%.linear: size mismatch"),
     "a host that opens the core before setting package.path still has nn errors blame the caller")

out = stock([[
local glia = require "glia"
local x = glia.tensor({1, 2, 3})
x:requires_grad()
glia.sum(x * x):backward()
local g = x.grad:totable()
print(("%g,%g,%g"):format(g[1], g[2], g[3]))
]])
t.is(out, "2,4,6\n", "autograd works from a stock interpreter (d(x*x)/dx = 2x)")

t.done()
