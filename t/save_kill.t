-- t/save_kill.t -- a save killed mid-write loses nothing.
--
-- ROUNDS times, a child glia process (the flavor under test) saves in a
-- loop, alternately, a checkpoint (glia.checkpoint.save: a 256x1024 Linear,
-- 1 MiB) and a plain file (glia.save: 2 MiB), every tensor filled with the
-- step number, and prints each step once its save has returned. It is
-- killed with SIGKILL a random delay after it is ready (seeded; the seed
-- is printed), so kills land before the first save, inside writes, fsyncs
-- and renames, and between saves. After each kill, both files must load, hold one step
-- in every element and in their metadata, and that step must be the last
-- one the child reported saved (or the one after: a rename can land just
-- before the kill, its report not). The next child starts after that step.
--
-- A kill leaves the temporary file of the save it interrupted
-- (<file>.tmp<pid>-XXXXXX). The next successful save of the same file
-- removes every such file whose process is gone, so they never pile up:
-- after a round whose child saved a file at least once, at most one is
-- left beside it (the kill's own); after a clean save at the end, none.
-- (Rounds killed before any save of a file add one each until then.)
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local u = require "t.util"
local glia = require "glia"
local checkpoint = require "glia.checkpoint"

local fmt = string.format
local ROUNDS = 30
local MAX_DELAY_MS = 80

local seed = tonumber(os.getenv("GLIA_TEST_SEED") or "") or os.time()
t.diag(fmt("seed %d (set GLIA_TEST_SEED to repeat)", seed))
math.randomseed(seed)

local dir = os.tmpname()
os.remove(dir)
assert(checkpoint.make_dir(dir))
local ck_dir, plain = dir .. "/ck", dir .. "/plain.safetensors"
local child, log = dir .. "/child.lua", dir .. "/child.log"

u.spit(child, [[
local glia = require "glia"
local nn = require "glia.nn"
local checkpoint = require "glia.checkpoint"
local dir, first = arg[1], tonumber(arg[2])
local m = nn.Linear(256, 1024)
io.stdout:write("ready\n"); io.stdout:flush()
for step = first, first + 100000 do
  glia.no_grad(function() m.weight:fill_(step); m.bias:fill_(step) end)
  assert(checkpoint.save(dir .. "/ck", { model = m, step = step }))
  io.stdout:write("ck ", step, "\n"); io.stdout:flush()
  assert(glia.save(dir .. "/plain.safetensors", { w = glia.full({ 512, 1024 }, step) },
                   { step = tostring(step) }))
  io.stdout:write("plain ", step, "\n"); io.stdout:flush()
end
]])

-- The step a file holds, or nil and why not: every element of each tensor
-- and the metadata must agree.
local function uniform(x, step)
  return (x - step):abs():max():item() == 0
end
local function plain_step()
  local ts, meta = glia.load(plain)
  if not ts then return nil, meta end
  local step = tonumber(meta.step)
  if not step then return nil, "no step in the metadata" end
  if not (ts.w and ts.w:numel() == 512 * 1024 and uniform(ts.w, step)) then
    return nil, "tensor w does not hold step " .. step
  end
  return step
end
local function ck_step()
  local ck, msg = checkpoint.read(ck_dir)
  if not ck then return nil, msg end
  local w, b = ck.tensors["model.weight"], ck.tensors["model.bias"]
  if not (w and b and w:numel() == 256 * 1024 and uniform(w, ck.step) and uniform(b, ck.step)) then
    return nil, "the model does not hold step " .. ck.step
  end
  return ck.step
end

-- The last step of each kind the child reported saved (0: none).
local function reported()
  local last = { ck = 0, plain = 0 }
  for kind, step in u.slurp(log):gmatch("(%a+) (%d+)\n") do last[kind] = tonumber(step) end
  return last
end

-- The temporary files beside each file.
local function strays()
  local n = { ck = 0, plain = 0 }
  for kind, d in pairs({ ck = ck_dir, plain = dir }) do
    for _ in u.sh("ls -a " .. u.sh_quote(d) .. " 2>/dev/null"):gmatch("%.safetensors%.tmp") do
      n[kind] = n[kind] + 1
    end
  end
  return n
end

local exe = u.exe()
local have = { ck = 0, plain = 0 } -- the steps on disk
local problems, killed_mid, max_strays = {}, 0, 0
for round = 1, ROUNDS do
  local delay = math.random(0, MAX_DELAY_MS) / 1000
  local first = math.max(have.ck, have.plain) + 1
  -- the delay counts from the child's "ready", so a slow start (the
  -- sanitizer flavor, a loaded machine) does not eat it
  os.execute(fmt("%s %s %s %d > %s 2>&1 & p=$!; " ..
                 "while kill -0 $p 2>/dev/null && ! grep -q ready %s; do sleep 0.005; done; " ..
                 "sleep %.3f; kill -9 $p 2>/dev/null; wait $p 2>/dev/null",
                 u.sh_quote(exe), u.sh_quote(child), u.sh_quote(dir), first, u.sh_quote(log),
                 u.sh_quote(log), delay))
  local last = reported()
  for kind, read in pairs({ ck = ck_step, plain = plain_step }) do
    local step, why = read()
    -- what the file may hold: the child's last reported step or the one
    -- after it; when it reported none, the step before the round or its
    -- first one
    local l = last[kind]
    local a, b = l, l + 1
    if l == 0 then a, b = have[kind], first end
    if not step and have[kind] == 0 and l == 0 then
      -- nothing saved yet (not even unreported): no file is right
    elseif not step then
      problems[#problems + 1] = fmt("round %d: %s: %s", round, kind, why)
    elseif step ~= a and step ~= b then
      problems[#problems + 1] = fmt("round %d: %s holds step %d, expected %d or %d",
                                    round, kind, step, a, b)
    else
      if step == b and b ~= have[kind] and (l == 0 or step == l + 1) then
        killed_mid = killed_mid + 1
      end
      have[kind] = step
    end
  end
  local n = strays()
  for kind, k in pairs(n) do
    if last[kind] > 0 and k > max_strays then max_strays = k end
  end
end
t.diag(fmt("%d rounds: steps on disk ck %d, plain %d; %d renames landed unreported; " ..
           "at most %d temporary files beside a file after a save", ROUNDS, have.ck, have.plain, killed_mid,
           max_strays))

if not t.ok(#problems == 0, "after each kill, both files load whole, at the step last saved") then
  for i = 1, math.min(#problems, 10) do t.diag(problems[i]) end
end
t.ok(have.ck > 1 and have.plain > 1, "the children saved several steps between kills")
t.ok(max_strays <= 1, fmt("temporary files left by kills do not pile up (after a save: at " ..
                          "most %d beside a file)", max_strays))

-- A clean save removes what the killed ones left.
glia.save(plain, { w = glia.zeros(1) }, { step = "0" })
checkpoint.save(ck_dir, { step = 0 })
local left = strays()
t.is(left.ck + left.plain, 0, "a clean save of each file removes the temporary files of killed saves")

os.execute("rm -rf " .. u.sh_quote(dir))
t.done()
