-- t/util.lua -- glia-specific helpers shared by the Lua tests (t/tap.lua
-- stays a plain TAP producer). Like t.error_like, a helper that asserts
-- takes its description last and prints why it failed as a diagnostic.
--   local u = require "t.util"
--   u.survives_oom(fn [, limit]) | u.oom_ok(fn, desc)   allocation failure
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

return M
