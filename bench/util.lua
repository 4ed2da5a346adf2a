-- bench/util.lua -- what the glia-side benchmark scripts share: medians of
-- wall-clock runs (glia.clock) and the process's peak resident set.
local glia = require "glia"
local clock, floor, sort = glia.clock, math.floor, table.sort

local M = {}

-- Median of a list of numbers (the list is left as it was).
function M.median(ts)
  local s = {}
  for i, v in ipairs(ts) do s[i] = v end
  sort(s)
  return s[floor(#s / 2) + 1]
end

-- Median wall seconds of fn() over reps runs, after one warm-up run.
function M.time(fn, reps)
  fn()
  local ts = {}
  for i = 1, reps do
    local t0 = clock()
    fn()
    ts[i] = clock() - t0
  end
  return M.median(ts)
end

-- Peak resident set of this process in MB (VmHWM).
function M.peak_rss()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  local kb = s:match("VmHWM:%s*(%d+)")
  return kb and tonumber(kb) / 1024 or 0
end

return M
