-- bench/ddp.lua -- gpt_train_ddp: the gpt_train step (models/gpt.lua, vocab
-- 73, d=256, 4 layers, 4 heads, a global batch of 16 x 256, AdamW) trained
-- data-parallel with glia.distributed, and the all-reduce bandwidth.
--
--   glia bench/ddp.lua single                  one process, the whole batch
--   mpirun -np N ... glia bench/ddp.lua ddp [BUCKET_MB]
--                                              N ranks, 16 / N sequences each,
--                                              DataParallel's buckets of
--                                              BUCKET_MB MiB (4, as train_gpt
--                                              --ddp and docs/scaling.md)
--   mpirun -np N ... glia bench/ddp.lua allreduce
--
-- single and ddp print (rank 0) one line:
--   gpt_train_ddp ranks N threads T step_ms S tok/s R exposed_ms E allreduce_ms A
-- (and skew_ms S) with medians over 8 steps after 2 of warm-up. exposed_ms
-- is the time in DataParallel:sync() -- the communication that backward
-- did not hide -- less skew_ms, the time sync waits for the slowest rank to
-- finish its backward (large on a loaded machine),
-- and allreduce_ms the time the same buckets take to all-reduce alone, one
-- after another as sync runs them: exposed / allreduce is the fraction of
-- all-reduce time not overlapped with compute.
-- allreduce prints, per size, "allreduce_bw ranks N bytes B ms T algbw_GBs G busbw_GBs U"
-- (busbw = algbw x 2(N-1)/N, what each link carries in a ring all-reduce).
local script_dir = (arg and arg[0] or ""):match("^(.-)[^/]*$")
package.path = script_dir .. "../?.lua;" .. package.path

local glia  = require "glia"
local optim = require "glia.optim"
local GPT   = require "models.gpt"
local util  = require "bench.util"

local fmt, median = string.format, util.median
local mode = arg[1] or "single"
local V, B, T = 73, 16, 256

local dist, rank, world = nil, 0, 1
if mode ~= "single" then
  dist = require "glia.distributed"
  rank, world = dist.init()
end
local clock = dist and dist.wtime or glia.clock

local function say(...)
  if rank == 0 then
    io.write(fmt(...), "\n")
    io.flush()
  end
end

if mode == "allreduce" then
  for _, mb in ipairs { 1, 4, 16, 64 } do
    local n = mb * 262144
    local t = glia.ones(n)
    dist.all_reduce(t) -- warm-up: connections, buffers
    local ts = {}
    for i = 1, 7 do
      dist.barrier()
      local t0 = clock()
      dist.all_reduce(t)
      ts[i] = clock() - t0
    end
    local s = median(ts)
    local alg = n * 4 / s / 1e9
    say("allreduce_bw ranks %d bytes %d ms %.3f algbw_GBs %.3f busbw_GBs %.3f", world, n * 4,
        s * 1e3, alg, alg * 2 * (world - 1) / world)
  end
  os.exit(0, true)
end

glia.manual_seed(0)
local net = GPT{ vocab_size = V }
local bucket_mb = tonumber(arg[2]) or 4 -- 25 (PyTorch's) makes one bucket: no overlap
local model = dist and dist.DataParallel(net, { bucket_mb = bucket_mb }) or net
local opt = optim.AdamW(net:parameters(), { lr = 3e-4 })
glia.manual_seed(1) -- the same global batch on every rank: each takes its part
local x, y = glia.randint(1, V + 1, B, T), glia.randint(1, V + 1, B, T)
local part = B / world
x, y = x:narrow(1, rank * part + 1, part), y:narrow(1, rank * part + 1, part)

local steps, exposed, skew = {}, {}, {}
for i = 1, 10 do
  if dist then dist.barrier() end
  local t0 = clock()
  opt:zero_grad()
  model:loss(x, y):backward()
  local t1 = clock()
  if dist then model:sync() end -- no other collective may come between
  local t2 = clock()
  opt:step()
  collectgarbage()
  local t3 = clock()
  -- the part of sync spent waiting for a slower rank's backward: the
  -- slowest backward (the steps start together, after a barrier) minus ours
  local lag = 0
  if dist then
    local bw = dist.all_gather(glia.tensor{ t1 - t0 }):totable()
    for _, v in ipairs(bw) do lag = math.max(lag, v[1] - (t1 - t0)) end
  end
  if i > 2 then
    steps[#steps + 1] = t3 - t0
    skew[#skew + 1] = lag
    exposed[#exposed + 1] = math.max(0, t2 - t1 - lag)
  end
end
local step_s, exposed_s, alone_s = median(steps), median(exposed), 0
if dist then -- the same buckets, all-reduced with nothing else running
  local ts = {}
  for i = 1, 5 do
    dist.barrier()
    local t0 = clock()
    for _, b in ipairs(model.buckets) do dist.all_reduce(b.flat, "mean") end -- in turn, as sync
    ts[i] = clock() - t0
  end
  alone_s = median(ts)
end
say("gpt_train_ddp ranks %d threads %d step_ms %.1f tok/s %.0f exposed_ms %.2f allreduce_ms %.2f "
    .. "skew_ms %.2f", world, glia.num_threads(), step_s * 1e3, B * T / step_s, exposed_s * 1e3,
    alone_s * 1e3, median(skew) * 1e3)
