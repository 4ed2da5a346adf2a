-- t/util.lua -- glia-specific helpers shared by the Lua tests (t/tap.lua
-- stays a plain TAP producer). Like t.error_like, a helper that asserts
-- takes its description last and prints why it failed as a diagnostic.
--   local u = require "t.util"
--   u.survives_oom(fn [, limit]) | u.oom_ok(fn, desc)   allocation failure
--   u.sh(cmd) | u.sh_quote(s) | u.slurp(path) | u.spit(path, s)
--   u.root() | u.exe() | u.skip_all(why)              shell, files, skips
local t = require "t.tap"
local glia = require "glia"

local M = {}

-- ================================================== allocation failure

-- Runs fn with the n-th and later allocations failing, for n = 1, 2, ... up
-- to limit (500), until it succeeds: every failure must be a clean
-- out-of-memory error (the sanitizer build checks that nothing leaks).
-- Returns true and the n it succeeded at; else false, the first other
-- error (or "never succeeded") and the last n tried.
function M.survives_oom(fn, limit)
  limit = limit or 500
  for n = 1, limit do
    glia.fail_alloc_after(n)
    local ok, err = pcall(fn)
    glia.fail_alloc_after(0)
    if ok then return true, nil, n end
    if not tostring(err):find("out of memory") then return false, err, n end
  end
  return false, "never succeeded", limit
end

-- One test line: fn survives every allocation failure (survives_oom).
function M.oom_ok(fn, desc)
  local ok, err = M.survives_oom(fn)
  if not t.ok(ok, desc) then t.diag(err) end
  return ok
end

-- ===================================================== shell and files

-- s as one sh word, whatever it holds.
function M.sh_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The stdout of a shell command and its exit status.
function M.sh(cmd)
  local f = io.popen(cmd .. "; echo \"exit=$?\"")
  local out = f:read("*a")
  f:close()
  local body, code = out:match("^(.-)exit=(%d+)\n$")
  return body, tonumber(code)
end

-- The bytes of a file; raises when it cannot be read.
function M.slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Writes s as the whole of a file; returns path.
function M.spit(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

-- The repository root: tests run from there.
function M.root() return (M.sh("pwd"):gsub("\n$", "")) end

-- The absolute path of the executable of the flavor under test ($GLIA_BIN,
-- set by make test; bin/glia otherwise).
function M.exe()
  local exe = os.getenv("GLIA_BIN") or "bin/glia"
  return exe:find("^/") and exe or M.root() .. "/" .. exe
end

-- Ends a test file that cannot run here with one skipped test.
function M.skip_all(why)
  t.ok(true, "# skip " .. why)
  t.done()
  os.exit(0)
end

return M
