-- t/fuzz.t -- random calls into every glia function, tensor method and
-- stdlib entry point (t/tools/fuzz.lua), for fixed seeds: no call, however
-- wrong its arguments, crashes glia, trips a sanitizer or leaks.
--
-- Each seed runs in a child process of the flavor under test, so a crash or
-- a sanitizer report (the SAN flavor kills the process on the first one) is
-- one failed test whose diagnostics show the last calls made and the
-- report, and the command that replays them. Under SAN=1 (`make SAN=1
-- test`, as .ci/run does) the seeds make many more calls than in the plain
-- flavors. FUZZ_SEEDS="1 2 3" and FUZZ_CALLS=N override both, for a longer
-- hunt by hand.
--
-- Memory is bounded so that an absurd size is an out-of-memory error: ASan
-- returns NULL past max_allocation_size_mb; the plain flavors run under
-- `ulimit -v`.
local t = require "t.tap"
local u = require "t.util"

local sh, sh_quote, slurp = u.sh, u.sh_quote, u.slurp
local fmt = string.format

local san = (os.getenv("GLIA_TEST_SAN") or "") ~= ""
local seeds, calls = { 1, 2, 3, 4 }, 10000
if san then seeds, calls = { 1, 2, 3, 4, 5, 6, 7, 8 }, 80000 end
if os.getenv("FUZZ_SEEDS") then
  seeds = {}
  for s in os.getenv("FUZZ_SEEDS"):gmatch("%d+") do seeds[#seeds + 1] = tonumber(s) end
end
calls = tonumber(os.getenv("FUZZ_CALLS")) or calls

local exe = u.exe()
local dir = sh("mktemp -d"):gsub("\n$", "")

-- The command that runs the driver for one seed; env adds variables.
local function command(seed, n, work, env)
  local limit = san and "" or "ulimit -v 2000000; "
  local asan = "ASAN_OPTIONS=" .. sh_quote((os.getenv("ASAN_OPTIONS") or "detect_leaks=1")
    .. ":allocator_may_return_null=1:max_allocation_size_mb=256")
  return fmt("%s%s %s %s t/tools/fuzz.lua %d %d %s", limit, asan, env or "", sh_quote(exe), seed,
    n, sh_quote(work))
end

-- Runs one seed; true, or false and what to print about it.
local function run(seed, n, env)
  local work = fmt("%s/%d", dir, seed)
  sh("rm -rf " .. sh_quote(work) .. "; mkdir -p " .. sh_quote(work))
  local log = work .. ".log"
  local cmd = command(seed, n, work, env)
  local _, code = sh("(" .. cmd .. ") >" .. sh_quote(log) .. " 2>&1")
  local out = slurp(log)
  local done = out:find(fmt("fuzz: done, seed %d, %d calls\n", seed, n), 1, true)
  if code == 0 and done then return true end
  -- the last calls made, then everything else printed (the report)
  local calls_made, report = {}, {}
  for line in out:gmatch("[^\n]+") do
    if line:find("^%d+ ") then calls_made[#calls_made + 1] = line
    elseif not line:find("^fuzz: seed") and not line:find("failed to allocate") then
      report[#report + 1] = line -- (allocations past the limit fail, with a warning)
    end
  end
  local last = table.concat(calls_made, "\n", math.max(1, #calls_made - 7))
  local rep = table.concat(report, "\n", 1, math.min(#report, 60))
  return false, fmt("exit status %d; the last calls (log: %s):\n%s\n%s\nreplay: %s", code, log,
                    last, rep, cmd)
end

-- The harness itself: a child that stops before its last call (here with
-- status 0) is a failure.
do
  local ok, why = run(0, 50, "FUZZ_EXIT_AT=20")
  t.ok(not ok and why:find("\n20 ", 1, true), "a run that stops midway counts as a failure")
end

local all_ok = true
for _, seed in ipairs(seeds) do
  local ok, why = run(seed, calls)
  if not t.ok(ok, fmt("seed %d: %d random calls, no crash, no sanitizer report, no leak", seed,
                      calls)) then
    t.diag(why)
    all_ok = false
  end
end

if all_ok then sh("rm -rf " .. sh_quote(dir)) end -- a failure's logs stay for a look
t.done()
