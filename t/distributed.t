-- t/distributed.t -- glia.distributed under mpirun: the collectives, bad
-- input named on every rank, a failing rank ending the job, DataParallel's
-- buckets, and data-parallel training equal to one process on the whole
-- batch. Runs only where glia was built with MPI (make sets GLIA_TEST_MPI)
-- and mpirun is installed. Every mpirun runs under `timeout`: a hang fails.
--
-- GLIA_MPIRUN replaces the launcher (default: mpirun --allow-run-as-root
-- --oversubscribe, as CI runs as root on machines of any core count). Ranks
-- run one thread each (GLIA_NUM_THREADS=1), over shared memory or loopback.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local sh, q = u.sh, u.sh_quote
if (os.getenv("GLIA_TEST_MPI") or "") == "" then u.skip_all("glia was built without MPI") end
if select(2, sh("command -v mpirun >/dev/null")) ~= 0 then u.skip_all("mpirun is not installed") end

local exe = u.exe()
local san = (os.getenv("GLIA_TEST_SAN") or "") ~= ""
local launcher = (os.getenv("GLIA_MPIRUN") or "mpirun --allow-run-as-root --oversubscribe")
  .. " --bind-to none --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"
  .. " -x GLIA_NUM_THREADS=1 -x GLIA_STDLIB -x ASAN_OPTIONS=detect_leaks=0"
local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. q(tmp)))

-- Output (stdout and stderr) and exit status of `np` ranks running cmd.
local function mpirun(np, cmd, limit)
  return sh(("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -k 5 %d %s -np %d %s 2>&1")
            :format(limit or 120, launcher, np, cmd))
end
local function glia_run(np, script, args, limit)
  return mpirun(np, q(exe) .. " " .. script .. " " .. (args or ""), limit)
end
local function lines_of(out, prefix)
  local got = {}
  for line in out:gmatch("[^\n]+") do
    if line:sub(1, #prefix) == prefix then got[#got + 1] = line end
  end
  table.sort(got)
  return got
end

-- ------------------------------------------------------------ collectives

local want = {
  "all_gather 0,0,1,1", "all_gather_shape 2x2", "all_reduce_mean 1.5,1.5",
  "all_reduce_sum 3,3,3", "async_all_gather 0,1", "async_all_reduce 1,1,1,1",
  "async_broadcast 5", "async_reduce_scatter 1,1", "broadcast 11,11", "done world 2",
}
local function check_collectives(out, code, who)
  t.is(code, 0, who .. ": the collectives script ends cleanly on 2 ranks")
  local got = table.concat(lines_of(out, "rank 0 "), "\n")
  local expect = {}
  for i, w in ipairs(want) do expect[i] = "rank 0 " .. w end
  expect[#expect + 1] = "rank 0 reduce_scatter 2,4"
  expect[#expect + 1] = "rank 0 test_then_wait 2,2"
  table.sort(expect)
  t.is(got, table.concat(expect, "\n"),
       who .. ": all_reduce sum/mean, broadcast, all_gather, reduce_scatter, blocking and async, on rank 0")
  t.ok(out:find("rank 1 reduce_scatter 6,8", 1, true) and out:find("rank 1 broadcast 11,11", 1, true),
       who .. ": rank 1 gets its own part of reduce_scatter and root's broadcast")
  if code ~= 0 then t.diag(out) end
end
local out, code = glia_run(2, "t/dist/collectives.lua")
check_collectives(out, code, "glia")

-- from a stock interpreter, with only glia --env's exports
local interp = os.getenv("GLIA_TEST_LUA") or (jit and "luajit" or "lua5.4")
local moddir = "lib/lua/" .. (interp == "luajit" and "5.1" or "5.4") .. "/glia/"
if san or sh("ldd " .. moddir .. "core.so " .. moddir .. "mpi.so 2>/dev/null"):find("asan") then
  t.ok(true, "# skip a sanitizer build's module cannot load into a stock " .. interp)
else
  local env = sh(q(exe) .. " --env")
  out, code = mpirun(2, "sh -c " .. q("eval " .. q(env) .. "; exec " .. interp .. " t/dist/collectives.lua"))
  check_collectives(out, code, "stock " .. interp)
end

-- Without GLIA_NUM_THREADS, the ranks on one machine split its cores.
do
  local cores = tonumber((sh("getconf _NPROCESSORS_ONLN")))
  local own = launcher:gsub("%-x GLIA_NUM_THREADS=1 ", "")
  out, code = sh(("env -u GLIA_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                  .. "timeout -k 5 60 %s -np 2 %s -e %s 2>&1")
                 :format(own, q(exe), q('local d = require "glia.distributed"; d.init(); '
                                        .. 'print("threads " .. glia.num_threads())')))
  local want_n = math.max(1, math.floor(cores / 2))
  t.is(select(2, out:gsub("threads " .. want_n .. "\n", "")), 2,
       ("2 ranks on %d cores without GLIA_NUM_THREADS run %d thread(s) each"):format(cores, want_n))
end

-- ------------------------------------------------------------ bad input

local cases = {
  shape = "glia.distributed.all_reduce: shapes differ across ranks: rank 0 has {4,3}, rank 1 has {4,4}",
  dtype = "glia.distributed.all_reduce: rank 1 passed a i64 tensor {3} (collectives take f32 tensors)",
  strided = "glia.distributed.broadcast: rank 0 passed a non-contiguous tensor {4,3} (call :contiguous() first)",
  call = "ranks disagree on the call: rank 0 runs all_reduce(sum, root 0), "
    .. "rank 1 runs broadcast(sum, root 0)",
  split = "glia.distributed.reduce_scatter: rank 0 passed a tensor {3} whose first dim does not split over 2 ranks",
  root = "glia.distributed.broadcast: rank 0 passed root 5, not a rank of 0..1",
  op = 'glia.distributed.all_reduce: rank 0: op must be "sum" or "mean", got max',
  op_one = 'glia.distributed.all_reduce: rank 1: op must be "sum" or "mean", got max',
  freed_one = "glia.distributed.all_reduce: rank 0: expected a live tensor, got userdata (freed?)",
  not_tensor_one = "glia.distributed.all_gather: rank 1: expected a live tensor, got number",
  freed_scatter_one = "glia.distributed.reduce_scatter: rank 1: expected a live tensor, got userdata (freed?)",
  root_wraps = "glia.distributed.broadcast: rank 0 passed root 4294967296, not a rank of 0..1",
  root_float_one = "glia.distributed.broadcast: rank 1: root must be a rank (an integer), got 0.5",
  gather_shape = "glia.distributed.all_gather: shapes differ across ranks: rank 0 has {2}, rank 1 has {3}",
  batch = "data.DataLoader: world size 2 does not divide the batch size 3 (the global batch)",
}
local names = {}
for k in pairs(cases) do names[#names + 1] = k end
table.sort(names)
for _, name in ipairs(names) do
  out, code = glia_run(2, "t/dist/bad.lua", name)
  local errs = lines_of(out, "rank ")
  local ok = code == 0 and #errs == 4
  for r = 0, 1 do
    local line = out:match("rank " .. r .. " error ([^\n]*)")
    ok = ok and line and line:find(cases[name], 1, true) ~= nil
      and line:find("^t/dist/bad%.lua:%d+: ") ~= nil
  end
  t.ok(ok and out:find("rank 0 after 2", 1, true) and out:find("rank 1 after 2", 1, true),
       "bad input (" .. name .. "): every rank raises the same error, naming it and the script's "
       .. "line, and the ranks go on")
  if not ok then t.diag(out) end
end

-- ------------------------------------------------------------ after finalize

do
  out, code = glia_run(2, "t/dist/finalize.lua", "", 60)
  t.is(code, 0, "finalize with collectives still open ends cleanly (no MPI call after MPI_Finalize)")
  local ok = true
  for r = 0, 1 do
    ok = ok and out:find("rank " .. r .. " sum 2,2,2", 1, true)
  end
  t.ok(ok, "finalize first completes the all_reduce still open on every rank")
  local want_err = {
    wait = "handle:wait() after glia.distributed.finalize()",
    test = "handle:test() after glia.distributed.finalize()",
    rank = "glia.distributed.rank: called after glia.distributed.finalize()",
    world_size = "glia.distributed.world_size: called after glia.distributed.finalize()",
    init = "glia.distributed.init: called after glia.distributed.finalize() (MPI cannot be started again)",
    all_reduce = "glia.distributed.all_reduce: called after glia.distributed.finalize()",
  }
  for what, msg in pairs(want_err) do
    local both = true
    for r = 0, 1 do
      local line = out:match("rank " .. r .. " " .. what .. " ([^\n]*)")
      both = both and line and line:find(msg, 1, true) ~= nil
    end
    t.ok(both, "after finalize, " .. what .. " is an error on every rank: " .. msg)
  end
  t.ok(out:find("rank 0 initialized false", 1, true), "is_initialized() is false after finalize")
  if code ~= 0 then t.diag(out) end
end

-- ------------------------------------------------------------ a failing rank

for _, where in ipairs { "collective", "backward" } do
  out, code = glia_run(2, "t/dist/fail.lua", where, 60)
  t.ok(code ~= 0 and code ~= 124 and code ~= 137,
       "a rank raising an error (" .. where .. ") ends the whole job, non-zero, before the timeout")
  t.ok(out:find("rank one", 1, true) and out:find("rank 1 ended while this rank waits", 1, true),
       "the job's output shows the error and why rank 0 stopped")
  t.ok(not out:find("was not stopped", 1, true), "no rank goes on past the failure")
  if code == 0 or code == 124 then t.diag(out) end
end

-- ------------------------------------------------------------ buckets

out, code = glia_run(2, "t/dist/buckets.lua", "0.05")
local sizes, seen, nb, ordered = {}, {}, 0, true
for v in (out:match("sizes ([%d,]+)") or ""):gmatch("%d+") do sizes[#sizes + 1] = tonumber(v) end
local last = math.huge
for b in out:gmatch("bucket ([%d,]+)") do
  nb = nb + 1
  for v in b:gmatch("%d+") do
    local i = tonumber(v)
    seen[i] = (seen[i] or 0) + 1
    ordered = ordered and i < last
    last = i
  end
end
local once = #sizes == 8
for i = 1, #sizes do once = once and seen[i] == 1 end
t.ok(code == 0 and once, "the buckets cover each of the 8 parameters exactly once")
t.ok(ordered, "buckets hold the parameters in reverse registration order")
t.ok(nb == 2, "bucket_mb = 0.05 (13107 floats) makes 2 buckets of this model, got " .. nb)

-- ------------------------------------------------------------ DataParallel's edge cases

out, code = glia_run(2, "t/dist/dp_cases.lua")
t.ok(code == 0 and select(2, out:gsub("wrap true", "")) == 2,
     "DataParallel copies rank 0's parameters to every rank at wrap time")
t.ok(select(2, out:gsub("partial 0,1.25,2.5,0,1.25,2.5", "")) == 2
     or select(2, out:gsub("partial 0.0,1.25,2.5,0.0,1.25,2.5", "")) == 2,
     "a parameter only rank 0 used gets rank 0's gradient / 2 on both ranks (the other counts zero)")
t.ok(select(2, out:gsub("twice [^\n]*a second backward before sync%(%)", "")) == 2,
     "a second backward before sync() is an error on every rank, not a lost gradient")
local b0, b1 = out:match("rank 0 moebias ([^\n]+)"), out:match("rank 1 moebias ([^\n]+)")
t.ok(b0 and b0 == b1 and b0:find("[1-9]"),
     "nn.MoE's balancing bias, updated after sync from the counts of both ranks, is the same on both")
if code ~= 0 then t.diag(out) end

-- ------------------------------------------------------------ equivalence

local function load(path)
  local ok, sd = pcall(glia.load, path)
  return ok and sd or nil
end
-- the largest |a - b| over the largest |a| of each tensor
local function rel_diff(a, b)
  local worst = 0
  for k, v in pairs(a) do
    if not b[k] then return math.huge end
    local scale = math.max(glia.max(glia.abs(v)):item(), 1e-30)
    worst = math.max(worst, glia.max(glia.abs(v - b[k])):item() / scale)
  end
  return worst
end

local single = tmp .. "/single.st"
out, code = sh(q(exe) .. " t/dist/train.lua single 5 " .. q(single) .. " 2>&1")
t.is(code, 0, "one process trains 5 steps at batch 16")
local ref = load(single)
for _, run in ipairs { { 2, "25", "a" }, { 2, "25", "b" }, { 4, "0.002", "c" } } do
  local np, mb, tag = run[1], run[2], run[3]
  local path = tmp .. "/ddp" .. tag .. ".st"
  out, code = glia_run(np, "t/dist/train.lua", "ddp 5 " .. q(path) .. " " .. mb)
  local got = load(path)
  local d = ref and got and rel_diff(ref, got) or math.huge
  t.ok(code == 0 and d <= 1e-6,
       ("%d ranks x batch %d, bucket_mb %s: the parameters after 5 steps equal one process at batch 16 "
        .. "(relative difference %.3g <= 1e-6)"):format(np, 16 / np, mb, d))
  if code ~= 0 then t.diag(out) end
end
t.ok(u.slurp(tmp .. "/ddpa.st") == u.slurp(tmp .. "/ddpb.st"),
     "two runs on 2 ranks give bitwise identical parameters")

-- ------------------------------------------------------------ train_gpt --ddp

do
  local words = { "in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light" }
  local rng, parts = require("glia.data").Generator(4), {}
  for i = 1, 6000 do parts[i] = words[rng:random(#words)] end
  local text = u.spit(tmp .. "/text.txt", table.concat(parts, " "))
  local common = "--text " .. q(text) .. " --d 16 --layers 2 --heads 2 --ctx 16 --batch 8 "
    .. "--warmup 3 --eval-every 5 --sample-len 8 --seed 3"
  local A, B = tmp .. "/gptA", tmp .. "/gptB"
  sh("GLIA_NUM_THREADS=1 " .. q(exe) .. " examples/train_gpt.lua " .. common .. " --steps 20 --out " .. q(A))
  out, code = glia_run(2, "examples/train_gpt.lua", "--ddp " .. common .. " --steps 10 --decay-steps 20 --out " .. q(B))
  local _, evals = out:gsub("val loss: ", "")
  t.ok(code == 0 and evals == 2, "train_gpt --ddp on 2 ranks: one rank prints the 2 evaluations of 10 steps")
  t.ok(out:find("data-parallel: 2 ranks x 4 sequences", 1, true), "the global batch of 8 is split over the ranks")
  if code ~= 0 then t.diag(out) end
  out, code = glia_run(4, "examples/train_gpt.lua", "--ddp --resume " .. q(B) .. " --steps 20")
  t.ok(code == 0 and out:find("resumed from .* at step 10"), "the 2-rank checkpoint resumes on 4 ranks")
  -- the loss of each step, as one process logs it and as the ranks did
  local function losses(dir)
    local v = {}
    for line in u.slurp(dir .. "/log.csv"):gmatch("[^\n]+") do
      local s, l = line:match("^(%d+),([^,]+)")
      if s then v[tonumber(s)] = tonumber(l) end
    end
    return v
  end
  local la, lb, worst = losses(A), losses(B), 0
  for s = 1, 20 do worst = math.max(worst, math.abs((la[s] or 0) - (lb[s] or math.huge)) / la[s]) end
  t.ok(worst <= 1e-5, ("train_gpt: 10 steps on 2 ranks then 10 on 4 log the losses of 20 steps in one "
                       .. "process (relative difference %.3g <= 1e-5)"):format(worst))
end

-- ------------------------------------------------------------ train_fmnist --ddp

do
  u.write_fmnist(tmp, "train", 128, require("glia.data").Generator(1))
  u.write_fmnist(tmp, "t10k", 32, require("glia.data").Generator(2))
  local F = "examples/train_fmnist.lua --data " .. q(tmp) .. " --batch 32 --schedule constant "
  local A, B = tmp .. "/fmA", tmp .. "/fmB"
  sh("GLIA_NUM_THREADS=1 " .. q(exe) .. " " .. F .. "--epochs 2 --out " .. q(A) .. " 2>&1")
  out, code = glia_run(2, F, "--ddp --epochs 1 --out " .. q(B))
  local _, heads = out:gsub("Fashion%-MNIST: ", "")
  t.ok(code == 0 and heads == 1 and out:find("test accuracy: "),
       "train_fmnist --ddp on 2 ranks: one rank prints, evaluates and checkpoints")
  if code ~= 0 then t.diag(out) end
  out, code = glia_run(4, F, "--ddp --epochs 2 --resume " .. q(B))
  t.ok(code == 0 and out:find("epoch 2/2") and not out:find("epoch 1/2  train"),
       "its checkpoint resumes on 4 ranks at epoch 2")
  local function epoch2(dir) return u.slurp(dir .. "/train_log.csv"):match("\n2,8,,,([^,]+)") end
  local la, lb = tonumber(epoch2(A)), tonumber(epoch2(B))
  t.ok(la and lb and math.abs(la - lb) <= 1e-5 * la,
       ("train_fmnist: an epoch on 2 ranks then one on 4 end at the test loss of 2 epochs in one "
        .. "process (%s, %s)"):format(tostring(la), tostring(lb)))
  -- 136 images in batches of 32: --ddp drops the last 8, as --drop_last does in one process
  local odd = tmp .. "/odd"
  os.execute("mkdir -p " .. q(odd))
  u.write_fmnist(odd, "train", 136, require("glia.data").Generator(3))
  u.write_fmnist(odd, "t10k", 32, require("glia.data").Generator(2))
  F = "examples/train_fmnist.lua --data " .. q(odd) .. " --batch 32 --schedule constant --epochs 1 "
  local C, D, E = tmp .. "/fmC", tmp .. "/fmD", tmp .. "/fmE"
  sh("GLIA_NUM_THREADS=1 " .. q(exe) .. " " .. F .. "--drop_last --out " .. q(C) .. " 2>&1")
  sh("GLIA_NUM_THREADS=1 " .. q(exe) .. " " .. F .. "--out " .. q(E) .. " 2>&1")
  out, code = glia_run(2, F, "--ddp --out " .. q(D))
  local function epoch1(dir, steps)
    return tonumber(u.slurp(dir .. "/train_log.csv"):match("\n1," .. steps .. ",,,([^,]+)"))
  end
  local lc, ld = epoch1(C, 4), epoch1(D, 4)
  t.ok(code == 0 and lc and ld and math.abs(lc - ld) <= 1e-5 * lc,
       ("train_fmnist: a --ddp epoch over a partial last batch equals one process's with "
        .. "--drop_last (4 steps, test loss %s, %s)"):format(tostring(lc), tostring(ld)))
  t.ok(epoch1(E, 5), "without --drop_last one process takes the partial batch (5 steps)")
  if code ~= 0 then t.diag(out) end
end

os.execute("rm -rf " .. q(tmp))
t.done()
