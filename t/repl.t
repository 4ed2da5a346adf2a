-- t/repl.t -- the REPL as a person uses it: glia in a pseudo-terminal
-- (tmux) for prompts, completion, errors, multi-line input, history and
-- Ctrl-D; and through a pipe, where it reads plain lines.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local sh, sh_quote = u.sh, u.sh_quote
local exe = u.exe()

-- ======================================================== piped stdin

local out = sh("printf '%s\\n' '1+2' 'error(\"boom\")' 'for i=1,2 do' 'print(i*10)' 'end' "
               .. "| " .. exe .. " 2>&1")
t.ok(out:find("^3\n"), "piped into glia, an expression line prints its value")
t.ok(out:find("boom"), "piped into glia, an error line prints its message")
t.ok(out:find("10\n20\n"), "piped into glia, a multi-line loop runs once complete, after an error")

out = sh("printf '%s\\n' 'l = require(\"glia.nn\").Linear(3, 4)' 'l(glia.zeros(2, 5))' "
         .. "'y = l(glia.zeros(2, 5))' | " .. exe .. " 2>&1")
t.ok(out:find("^glia%.linear: size mismatch, {2,5} x {4,3}\n")
     and out:find("\nstdin:1: glia%.linear: size mismatch, {2,5} x {4,3}\n"),
     "a module's error names the typed line, or nothing when the line's value was returned "
     .. "(a tail call), never a line of the stdlib")

out = sh("printf '%s\\n' 'glia.load({})' 'x = glia.load({})' | " .. exe .. " 2>&1")
t.ok(out:find("^glia%.load: argument #1 must be a string, got table\n")
     and out:find("\nstdin:1: glia%.load: argument #1 must be a string, got table\n"),
     "glia.load's argument error names the op and the typed line (or nothing for a returned "
     .. "value), never a line of the stdlib")

out = sh("printf '%s\\n' '.time on' '1+1' '.time off' '2+2' '.5' '.help' | " .. exe .. " 2>&1")
t.ok(out:find("^2\ntime: [%d.]+ m?s\n4\n0%.5\n"),
     ".time on prints each statement's wall time until .time off; .5 is still Lua")
t.ok(out:find("%.time on|off"), ".help lists the REPL commands")

out = sh("printf '1+1\\n' | " .. exe .. " -e " .. sh_quote("glia = nil package.loaded.glia = nil "
         .. "package.preload.glia = function() error('no glia here') end") .. " -i 2>&1")
t.ok(out:find("no glia here") and out:find("\n2\n"),
     "when require 'glia' fails, the REPL prints why and still starts")

-- ============================================================ tmux

if select(2, sh("command -v tmux >/dev/null")) ~= 0 then
  u.skip_all("tmux is not installed: the terminal session is not tested")
end

local dir = sh("mktemp -d"):gsub("\n$", "")
local session = "glia-repl-" .. dir:match("[^/]+$"):gsub("[^%w]", "-")
local tmux = "tmux -S " .. sh_quote(dir .. "/tmux.sock") .. " "
local history = dir .. "/history"

local function tmux_do(args) return sh(tmux .. args .. " 2>&1") end

-- The pane's text, each line without trailing blanks, and no empty lines at
-- the end: the prompt being waited for is then at the very end.
local function screen()
  local s = tmux_do("capture-pane -p -J -S - -t " .. session)
  return (s:gsub("[ \t]+\n", "\n"):gsub("\n+$", ""))
end

-- Polls the screen until it matches pattern (a bounded number of tries);
-- returns whether it did.
local function wait_for(pattern)
  local s
  for _ = 1, 200 do
    s = screen()
    if s:find(pattern) then return true end
    os.execute("sleep 0.05")
  end
  t.diag("screen did not show " .. pattern .. ":\n" .. s)
  return false
end

local function type_keys(text) tmux_do("send-keys -t " .. session .. " -l " .. sh_quote(text)) end
local function press(key) tmux_do("send-keys -t " .. session .. " " .. key) end
local function enter(text) type_keys(text) press("Enter") end
local function escape(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

local function session_tests()
  -- A history file from earlier sessions, longer than the cap (libedit's format).
  local f = assert(io.open(history, "w"))
  f:write("_HiStOrY_V2_\n")
  for i = 1, 1500 do f:write("old_entry_", i, "\n") end
  f:close()
  -- The pane's shell outlives Ctrl-C (its trap) and records glia's exit status.
  local cmd = "trap true INT; env HOME=" .. sh_quote(dir) .. " GLIA_HISTORY="
              .. sh_quote(history) .. " " .. sh_quote(exe) .. "; echo $? > "
              .. sh_quote(dir .. "/status")
  tmux_do("new-session -d -s " .. session .. " -x 120 -y 40 " .. sh_quote(cmd))
  tmux_do("set-option -t " .. session .. " remain-on-exit on")
  local ok = wait_for("glia>$")
  t.ok(ok, "glia with no arguments on a terminal shows the glia> prompt")
  press("Up")
  ok = wait_for("glia> old_entry_1500$")
  t.ok(ok, "Up recalls the last line of an earlier session from the history file")
  press("C-u")

  enter("1+2")
  ok = wait_for("glia> 1%+2\n3\nglia>$")
  t.ok(ok, "an expression typed at the prompt prints its value")

  local make = glia.ones and "glia.ones(2,2)" or "glia.tensor({{1,1},{1,1}})"
  enter(make)
  ok = wait_for(escape(make) .. "\n.-glia%.tensor f32 {2,2}\nglia>$")
  t.ok(ok, "a tensor result prints summarized with its dtype and shape")

  -- glia.zer may name several fields (zeros, zeros_like, zero_): Tab
  -- completes their common prefix, a second Tab lists them.
  local names = {}
  for k in pairs(glia) do
    if k:find("^zer") then names[#names + 1] = "glia." .. k end
  end
  table.sort(names)
  local common = names[1] or ""
  while common ~= "" and not names[#names]:find("^" .. escape(common)) do
    common = common:sub(1, -2)
  end
  type_keys("glia.zer")
  press("Tab")
  ok = wait_for("glia> " .. escape(common) .. "$")
  t.ok(ok and common:find("^glia%.zero"), "Tab completes glia.zer to " .. common)
  press("Tab")
  ok = wait_for("glia%.zeros%s.-glia> " .. escape(common) .. "$")
  t.ok(ok, "a second Tab lists the candidates, glia.zeros among them")
  type_keys(("glia.zeros(3)"):sub(#common + 1))
  press("Enter")
  ok = wait_for("glia> glia%.zeros%(3%)\n.-glia%.tensor f32 {3}\nglia>$")
  t.ok(ok, "the completed glia.zeros(3) runs and prints a {3} tensor")

  enter("x = glia.tensor({1,2,3})")
  wait_for("glia> x = .-\nglia>$")
  type_keys("x:nume")
  press("Tab")
  ok = wait_for("glia> x:numel$")
  enter("()")
  ok = ok and wait_for("glia> x:numel%(%)\n3\nglia>$")
  t.ok(ok, "Tab completes a tensor method (x:nume to x:numel) and the call runs")

  local bad, want
  if glia.matmul then
    bad, want = "glia.matmul(glia.tensor({{1,2,3}}), glia.tensor({{1,2},{3,4}}))", "glia%.matmul"
  else
    bad, want = "glia.add(glia.tensor({{1,2,3}}), glia.tensor({1,2,3,4}))", "do not broadcast"
  end
  enter(bad)
  ok = wait_for(escape(bad) .. "\n[^\n]*" .. want .. ".-glia>$")
  t.ok(ok, "a bad call prints its error message instead of ending the session")
  enter("6*7")
  ok = wait_for("glia> 6%*7\n42\nglia>$")
  t.ok(ok, "after an error the session goes on and evaluates the next line")

  enter("for i=1,2 do")
  ok = wait_for("  %.%.%.>$")
  enter("print(i*100)")
  ok = ok and wait_for("  %.%.%.> print%(i%*100%)\n  %.%.%.>$")
  enter("end")
  ok = ok and wait_for("  %.%.%.> end\n100\n200\nglia>$")
  t.ok(ok, "a multi-line loop shows the continuation prompt and runs once complete")

  type_keys("this line is dropped")
  press("C-c")
  -- the terminal may discard the typed text before glia reads it
  ok = wait_for("200\nglia>[^\n]*\nglia>$")
  enter("5+5")
  ok = ok and wait_for("glia> 5%+5\n10\nglia>$")
  t.ok(ok, "Ctrl-C at the prompt drops the typed line and keeps the session")

  press("C-d")
  local status
  for _ = 1, 200 do
    local f = io.open(dir .. "/status")
    status = f and f:read("*l")
    if f then f:close() end
    if status then break end
    os.execute("sleep 0.05")
  end
  t.is(status, "0", "Ctrl-D at the prompt ends the REPL with exit status 0")

  f = io.open(history)
  local saved = f and f:read("*a") or ""
  if f then f:close() end
  t.ok(saved:find("1%+2") and saved:find("x:numel%(%)"),
       "typed lines are saved to the history file named by GLIA_HISTORY")
  local _, lines = saved:gsub("\n", "")
  t.ok(lines <= 1001 and not saved:find("old_entry_1\n") and saved:find("old_entry_1500"),
       "the history file is capped at 1000 entries, dropping the oldest")
end

local ok, err = pcall(session_tests)
tmux_do("kill-server")
sh("rm -rf " .. sh_quote(dir))
if not ok then t.ok(false, "the tmux session ran without a Lua error") t.diag(err) end
t.done()
