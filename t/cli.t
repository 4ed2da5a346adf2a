-- t/cli.t -- the glia executable's command line, as lua(1) users expect it:
-- -e, -l, -i, -v, -, script arguments in `arg`, exit statuses and messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local sh_quote, slurp = u.sh_quote, u.slurp

local dir = io.popen("mktemp -d"):read("*l")
local exe = u.exe()

-- Runs glia with a shell-quoted argument string (and stdin text);
-- returns stdout, stderr and the exit status.
local function glia_run(args, stdin)
  local input = stdin and ("printf '%s' " .. sh_quote(stdin) .. " | ") or "</dev/null "
  local cmd = input .. sh_quote(exe) .. " " .. args .. " >" .. dir .. "/out 2>" .. dir
              .. "/err; echo $?"
  local f = io.popen(cmd)
  local code = tonumber(f:read("*l"))
  f:close()
  return slurp(dir .. "/out"), slurp(dir .. "/err"), code
end

local function write(name, text)
  local f = assert(io.open(dir .. "/" .. name, "w"))
  f:write(text)
  f:close()
  return sh_quote(dir .. "/" .. name)
end

-- ======================================================== options

local out, err, code = glia_run("-e 'print(1+1)'")
t.ok(out == "2\n" and code == 0, "-e runs a statement and exits with status 0")

out = glia_run("-e 'x = 20' -e 'print(x + 1)'")
t.is(out, "21\n", "several -e options run in order in one state")

out = glia_run("-e 'print(glia.ones(2):sum():item())'")
t.ok(out == "2.0\n" or out == "2\n", "-e sees the global glia without requiring it (as th preloads torch)")
out = glia_run(write("uses_glia.lua", "print(glia.version, glia == require 'glia')"))
t.is(out, glia.version .. "\ttrue\n", "a script sees the global glia, the module require returns")
out = glia_run("-", "print(type(glia.zeros))")
t.is(out, "function\n", "a script from stdin sees the global glia")

out = glia_run("-v")
t.ok(out:find("^glia " .. glia.version:gsub("%.", "%%.") .. " %((.-)%)\n"),
     "-v prints the version and the Lua it was built for")
local cfg = glia.config()
t.ok(out:find("\nBLAS: +" .. cfg.blas_library:gsub("%p", "%%%0") .. ", kernel " .. cfg.blas_kernel
              .. " %(chosen by " .. cfg.blas_chosen_by .. "%)\n")
     and out:find("\nthreads: " .. cfg.num_threads .. "\n", 1, true),
     "-v names the BLAS kernel in use, who chose it, and the thread count")
t.ok(out:find("\nCPU: +" .. cfg.cpu_vendor .. ", " .. cfg.cpu_features:gsub("%p", "%%%0")),
     "-v lists the CPU features that decide the kernels")
t.is(out:find("LuaJIT") ~= nil, jit ~= nil, "-v names LuaJIT exactly when running on LuaJIT")

out = glia_run("-l glia -e 'print(glia.version)'")
t.is(out, glia.version .. "\n", "-l glia requires the module into the global glia")
out = glia_run("-l glia.core -e 'print(type(core.add))'")
t.is(out, "function\n", "-l a.b names the global after the module's last part")
out = glia_run("-l g=glia -e 'print(g.version)'")
t.is(out, glia.version .. "\n", "-l g=mod names the global g")
out, err, code = glia_run("-l no_such_module_here")
t.ok(code == 1 and err:find("module 'no_such_module_here' not found"),
     "-l of a missing module fails with status 1 and says which module")

out, err, code = glia_run("-x")
t.ok(code == 1 and err:find("unknown option '%-x'") and err:find("usage"),
     "an unknown option fails with status 1, naming it and printing the usage")
out, err, code = glia_run("-e")
t.ok(code == 1 and err:find("'%-e' needs an argument"),
     "-e without a statement fails with status 1 and says so")

-- ======================================================== scripts

local script = write("args.lua", "print(arg[0] == ..., arg[1], arg[2], select('#', ...), arg[-1])\n")
out = glia_run(script .. " " .. script .. " two")
t.is(out, "true\t" .. dir .. "/args.lua\ttwo\t2\t" .. exe .. "\n",
     "a script gets its arguments in arg[1..] and ..., itself in arg[0]")

out = glia_run("- a b", "print(arg[0], arg[1], ...)\n")
t.is(out, "-\ta\ta\tb\n", "glia - runs the script read from stdin, with its arguments")

out = glia_run("-- " .. script .. " -v")
t.ok(out:find("\t%-v\t"), "after --, a leading-dash word is a script argument, not an option")

local bad = write("bad.lua", "local function f() error('broken on purpose') end\nf()\n")
out, err, code = glia_run(bad)
t.is(code, 1, "a script that raises an error exits with status 1")
t.ok(err:find("bad%.lua:1: broken on purpose") and err:find("stack traceback"),
     "a script error prints the message and a traceback on stderr")

out, err, code = glia_run(sh_quote(dir .. "/missing.lua"))
t.ok(code == 1 and err:find("cannot open"), "a missing script fails with status 1 and says so")

local syntax = write("syntax.lua", "x = = 1\n")
out, err, code = glia_run(syntax)
t.ok(code == 1 and err:find("syntax%.lua:1:"), "a script with a syntax error fails with its location")

local set = write("set.lua", "x = 21\n")
out, err, code = glia_run("-i " .. set, "print(x * 2)\nprint(glia ~= nil)\n")
t.ok(out == "42\ntrue\n" and code == 0,
     "-i opens the REPL after the script, in the same state, with glia preloaded")

local shebang = write("shebang.lua", "#!/usr/bin/env glia\nprint('ran')\n")
out = glia_run(shebang)
t.is(out, "ran\n", "a script's #! first line is skipped")

os.execute("rm -rf " .. sh_quote(dir))
t.done()
