-- t/embed.t -- examples/embed.c builds against glia.h alone (nothing else
-- from vm/, no Lua headers) and the library objects of the flavor under test
-- (what lib/libglia.a archives), and runs: the model's result, the bad
-- call's message, the host buffer released once. Under the sanitizer build
-- the example is linked with the sanitizers too, so a leak or a use after
-- release fails this test.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local sh_quote = u.sh_quote

-- Output (stdout and stderr) and exit status of a shell command.
local function sh(cmd) return u.sh("(" .. cmd .. ") 2>&1") end

local root = u.root()
-- The flavor under test (lua5.4, luajit-san, ...): from $GLIA_BIN, which
-- make test sets to build/<flavor>/bin/glia, else the last one built.
local flavor = (os.getenv("GLIA_BIN") or ""):match("build/([^/]+)/bin/glia$")
if not flavor then
  local stamp = io.open(root .. "/build/.flavor")
  flavor = stamp and stamp:read("*l") or ""
  if stamp then stamp:close() end
end
local objs = "$(ls build/" .. flavor .. "/vm/*.o build/" .. flavor .. "/ops/*.o build/" .. flavor
             .. "/lua/*.o | grep -v /main.o)"
local luapc = flavor:find("^luajit") and "luajit" or "lua5.4"
local san = flavor:find("%-san$") and "-fsanitize=address,undefined -fno-omit-frame-pointer" or ""

if select(2, sh("command -v cc")) ~= 0 then
  u.skip_all("no C compiler: the example is not built")
end

local dir = sh("mktemp -d"):gsub("\n$", "")
sh("mkdir " .. sh_quote(dir .. "/include") .. " && cp vm/glia.h " .. sh_quote(dir .. "/include"))
local exe = dir .. "/embed"
local out, code = sh("cc -std=c99 -Wall -Wextra -pedantic -Werror " .. san .. " -I"
                     .. sh_quote(dir .. "/include") .. " examples/embed.c " .. objs .. " "
                     .. "$(pkg-config --libs " .. luapc .. ") -lopenblas -ledit -lz -lm -pthread -o "
                     .. sh_quote(exe))
t.is(code, 0, "examples/embed.c compiles warning-free as C99 with only glia.h and the library")
if code ~= 0 then t.diag(out) end

local function run(args)
  return sh("cd / && GLIA_STDLIB=" .. sh_quote(root .. "/stdlib") .. " " .. sh_quote(exe)
            .. (args and " " .. args or ""))
end

out, code = run()
t.is(code, 0, "the example runs to completion with exit status 0")
t.ok(out:find("model%.forward%(x%) =\n +4%.500 +2%.500\n +9%.000 +5%.500\n"),
     "the example prints the model's result for the wrapped host input")
t.ok(out:find("bad call: script error\n[^\n]*glia%.matmul: size mismatch, {3,2} x {3,4}"),
     "the example's bad call reports a script error naming glia.matmul and the shapes")
t.ok(out:find("host buffer released 1 time%(s%)"),
     "the example's host buffer is released exactly once")

local model = dir .. "/model.lua"
local f = assert(io.open(model, "w"))
f:write("local glia = require 'glia'\nmodel = {}\n",
        "function model.forward(x) return x:matmul(glia.tensor({{1}, {10}, {100}})) end\n")
f:close()
out, code = run(sh_quote(model))
t.ok(code == 0 and out:find("model%.forward%(x%) =\n +321%.000\n +654%.000\n"),
     "the example runs a model file named on its command line")

sh("rm -rf " .. sh_quote(dir))
t.done()
