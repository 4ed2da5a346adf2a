-- glia.distributed -- data-parallel training over MPI (Open MPI), launched
-- with mpirun: one process per rank, each with its own glia and its own
-- share of the batch, gradients averaged over the ranks during backward.
--
--   local dist = require "glia.distributed"
--   dist.init()                                  -- loads MPI: the first call to make
--   local model = dist.DataParallel(net, { bucket_mb = 25 })
--   loss:backward(); model:sync(); opt:step()    -- sync waits for the gradients
--
-- Collectives work in place on contiguous f32 tensors, the same call on every
-- rank: all_reduce(t, "sum"|"mean"), broadcast(t, root), all_gather(t) (a new
-- tensor {world_size, ...t's shape}), reduce_scatter(t, "sum"|"mean") (rank
-- r's part of t's first dim, reduced), barrier(). Each has an _async form
-- returning a handle: h:wait() (returns the result), h:test(). Ranks count
-- from 0, as in MPI; rank 0 is the root by default. The ranks check that
-- they make the same call on tensors of the same shape, and every rank
-- raises the same error if not.
--
-- A rank that raises an error ends the job: its script stops, and the other
-- ranks, waiting for it in a collective, call MPI_Abort (lua/mpi.c). Nothing
-- here loads MPI until init(): a script that never calls it runs without MPI
-- installed.
local glia = require "glia"
local options = require "glia.options"

local type, ipairs, pairs, tostring, setmetatable, pcall, require =
  type, ipairs, pairs, tostring, setmetatable, pcall, require
local error = glia.error -- blames the user's line, never the stdlib's
local fmt, floor = string.format, math.floor
local unpack = table.unpack or unpack

local dist = {}

local mpi -- the C module (lua/mpi.c), once init() ran
local rank, size
local finalized -- finalize() ran: MPI cannot be started again

local function need_init(fname)
  if finalized then
    error(fmt("glia.distributed.%s: called after glia.distributed.finalize() (MPI cannot "
              .. "be started again)", fname), 3)
  end
  if not mpi then
    error(fmt("glia.distributed.%s: call glia.distributed.init() first", fname), 3)
  end
end

-- Whether glia was built with MPI (the module glia.mpi is there).
function dist.available()
  return (pcall(require, "glia.mpi"))
end

-- Starts MPI (idempotent). Returns rank, world_size. Unless GLIA_NUM_THREADS
-- says otherwise, the ranks mpirun started on this machine share its cores:
-- each computes on cores / local ranks threads (at least 1), glia's pool and
-- OpenBLAS alike, so that N ranks do not run N x cores threads.
function dist.init()
  if finalized then need_init("init") end
  if not mpi then
    local ok, m = pcall(require, "glia.mpi")
    if not ok then
      error("glia.distributed.init: glia was built without MPI (install Open MPI with "
            .. "`make deps`, then rebuild with make): " .. tostring(m), 2)
    end
    rank, size = m.init()
    mpi = m
    local env = os.getenv("GLIA_NUM_THREADS")
    local here = tonumber(os.getenv("OMPI_COMM_WORLD_LOCAL_SIZE") or "")
    if (env == nil or env == "") and here and here > 1 then
      glia.set_num_threads(math.max(1, floor(glia.num_threads() / here)))
    end
  end
  return rank, size
end

-- false again after finalize().
function dist.is_initialized() return mpi ~= nil and not finalized end

function dist.rank()
  need_init("rank")
  return rank
end

function dist.world_size()
  need_init("world_size")
  return size
end

function dist.barrier()
  need_init("barrier")
  mpi.barrier()
end

-- Seconds from a fixed point (MPI_Wtime), the same clock on every rank.
function dist.wtime()
  need_init("wtime")
  return mpi.wtime()
end

-- Ends this rank's part: waits for the collectives still open (their
-- handles are errors to use afterwards), meets the other ranks, then
-- finalizes MPI. Called by itself when the Lua state closes; call it early to
-- leave MPI sooner. Every glia.distributed call after it is an error.
function dist.finalize()
  if mpi and not finalized then
    mpi.finalize()
    finalized = true
  end
end

-- Ends the whole job now with msg on stderr (MPI_Abort).
function dist.abort(msg)
  need_init("abort")
  mpi.abort(tostring(msg))
end

-- ======================================================= collectives

local Handle = {}
Handle.__index = Handle

-- Waits for the collective; returns its result tensor.
function Handle:wait()
  self.h:wait()
  return self.result
end

-- true once the collective completed.
function Handle:test() return self.h:test() end

-- A call bad on this rank alone is not raised here: its message goes to
-- mpi.start, which exchanges it with the other ranks' signatures, and every
-- rank raises it. A rank raising alone would leave the others in this
-- collective, to be paired with its next one.
local function bad_op(op)
  if op ~= nil and op ~= "sum" and op ~= "mean" then
    return fmt('op must be "sum" or "mean", got %s', tostring(op))
  end
end

-- t's shape, or nil when t is not a live tensor (mpi.start names that).
local function shape_of(t)
  if not glia.is_tensor(t) then return nil end
  local ok, shape = pcall(t.shape, t)
  return ok and shape or nil
end

local function start(kind, op, t, out, root, bad)
  if bad then op = "sum" end
  local h = mpi.start(kind, op or "sum", t, out, root, true, bad)
  return setmetatable({ h = h, result = out or t }, Handle)
end

function dist.all_reduce_async(t, op)
  need_init("all_reduce")
  return start("all_reduce", op, t, nil, 0, bad_op(op))
end

function dist.broadcast_async(t, root)
  need_init("broadcast")
  root = root or 0
  local bad
  if type(root) ~= "number" or root ~= floor(root) then
    bad = "root must be a rank (an integer), got " .. tostring(root)
    root = 0
  end
  return start("broadcast", "sum", t, nil, root, bad)
end

function dist.all_gather_async(t)
  need_init("all_gather")
  local shape = shape_of(t)
  local out = glia.empty(shape and { size, unpack(shape) } or { 0 })
  return start("all_gather", "sum", t, out, 0)
end

function dist.reduce_scatter_async(t, op)
  need_init("reduce_scatter")
  local shape = shape_of(t)
  local out
  if shape and #shape > 0 and shape[1] % size == 0 then
    shape[1] = floor(shape[1] / size)
    out = glia.empty(shape)
  else -- the ranks name the problem together
    out = glia.empty({ 0 })
  end
  return start("reduce_scatter", op, t, out, 0, bad_op(op))
end

function dist.all_reduce(t, op) return dist.all_reduce_async(t, op):wait() end
function dist.broadcast(t, root) return dist.broadcast_async(t, root):wait() end
function dist.all_gather(t) return dist.all_gather_async(t):wait() end
function dist.reduce_scatter(t, op) return dist.reduce_scatter_async(t, op):wait() end

-- ======================================================= DataParallel

local DataParallel = {}
-- What the wrapper does not define, the model does: dp:loss(x, y) is
-- model:loss(x, y).
function DataParallel.__index(self, k)
  local v = DataParallel[k]
  if v ~= nil then return v end
  local module = rawget(self, "module")
  v = module[k]
  if type(v) ~= "function" then return v end
  return function(_, ...) return v(module, ...) end
end

-- Wraps model (a glia.nn module) for data-parallel training. At wrap time
-- rank 0's parameters and buffers are copied to every rank. Gradients go in
-- buckets of about bucket_mb MiB (default 25), filled in reverse order of
-- registration (the order backward finishes them); a grad hook copies each
-- final gradient into its bucket, and a full bucket starts its non-blocking
-- all-reduce as soon as the one before it is done, while backward goes on.
-- Buckets start in the same order on every rank (bucket k only after
-- buckets 1..k-1), as MPI requires.
--
-- model:sync() (before the optimizer step) starts what is left, waits for
-- all, and writes the mean over ranks into each parameter's .grad. A
-- parameter no rank gave a gradient this step keeps .grad nil everywhere;
-- one that some ranks did gets their sum / world_size (the others count as
-- zero): each bucket carries one flag per parameter for this.
--
-- The wrapper calls through to the model: dp(x) is model(x), dp:loss(...)
-- is model:loss(...), and dp.module is the model. Only the hooks on the
-- parameters matter, so calling the model itself is the same. One backward
-- per sync, and no other collective between a backward and its sync: the
-- buckets' all-reduces are still starting then, and MPI needs every rank to
-- start its collectives in the same order.
function dist.DataParallel(model, opts)
  opts = options.check("glia.distributed.DataParallel", opts, { "bucket_mb" })
  if not mpi then
    error("glia.distributed.DataParallel: call glia.distributed.init() first", 2)
  end
  if type(model) ~= "table" or type(model.parameters) ~= "function" then
    error("glia.distributed.DataParallel: expected a glia.nn module, got " .. type(model), 2)
  end
  local mb = opts.bucket_mb or 25
  if type(mb) ~= "number" or not (mb > 0) then
    error("glia.distributed.DataParallel: bucket_mb must be a number > 0, got " .. tostring(mb), 2)
  end
  local self = setmetatable({ module = model, buckets = {}, launched = 0,
                              stats = { wait_s = 0, steps = 0, bytes = 0 } }, DataParallel)
  local params = model:parameters()
  glia.no_grad(function()
    for _, p in ipairs(params) do dist.broadcast(p, 0) end
    for _, b in ipairs(model:buffers()) do
      if b:dtype() == "f32" then
        dist.broadcast(b, 0)
      else -- counters (i64): through f32, exact for counts below 2^24
        local f = b:to("f32")
        dist.broadcast(f, 0)
        b:copy_(f:to(b:dtype()))
      end
    end
  end)
  -- Buckets: params in reverse registration order, a new bucket once the
  -- current one holds bucket_mb (a larger parameter has one of its own).
  local limit, cur = mb * 1048576 / 4, nil
  for i = #params, 1, -1 do
    local p = params[i]
    if not cur or cur.numel >= limit then
      cur = { params = {}, offset = {}, numel = 0 }
      self.buckets[#self.buckets + 1] = cur
    end
    local k = #cur.params + 1
    cur.params[k], cur.offset[k] = p, cur.numel
    cur.numel = cur.numel + p:numel()
  end
  for bi, b in ipairs(self.buckets) do
    -- the gradients, then one presence flag per parameter
    b.flat = glia.zeros(b.numel + #b.params)
    b.filled, b.have = 0, {}
    for k, p in ipairs(b.params) do
      p:register_grad_hook(function() self:_ready(bi, k) end)
    end
  end
  -- Every rank must have built the same buckets: a checked all-reduce of a
  -- tensor shaped by the layout fails, naming the shapes, where they differ.
  for _, b in ipairs(self.buckets) do dist.all_reduce(glia.zeros(#b.params, b.numel)) end
  self.handles = {}
  return self
end

function DataParallel:__call(...) return self.module(...) end
function DataParallel:parameters() return self.module:parameters() end

-- Bucket bi's parameter k has its final gradient: into the bucket it goes.
function DataParallel:_ready(bi, k)
  local b = self.buckets[bi]
  if b.have[k] then
    error("glia.distributed.DataParallel: a second backward before sync() (call sync() after "
          .. "each backward: its gradient would be lost)", 0)
  end
  local p = b.params[k]
  local n = p:numel()
  b.flat:narrow(1, b.offset[k] + 1, n):copy_(p.grad:reshape(n))
  b.flat[b.numel + k] = 1
  b.have[k] = true
  b.filled = b.filled + 1
  self:_progress()
end

function DataParallel:_launch(bi)
  local b = self.buckets[bi]
  self.handles[bi] = mpi.start("all_reduce", "mean", b.flat, nil, 0, false)
  self.launched = bi
end

-- One bucket in flight at a time: Open MPI runs several non-blocking
-- all-reduces at once far slower than one after another (4 of 3.2 MB on
-- 2 ranks: 108 ms together, 12 ms in turn). So: the bucket in flight, if
-- done (MPI only progresses when called), makes way for the next full one.
function DataParallel:_progress()
  local bi = self.launched
  if bi > 0 and not self.handles[bi]:test() then return end
  if bi < #self.buckets then
    local b = self.buckets[bi + 1]
    if b.filled == #b.params then self:_launch(bi + 1) end
  end
end

-- Finishes the step's gradients: parameters without one count as zero,
-- every bucket is started and waited for, and .grad is the mean over ranks.
function DataParallel:sync()
  local t0 = mpi.wtime()
  for bi = self.launched + 1, #self.buckets do
    local b = self.buckets[bi]
    for k, p in ipairs(b.params) do
      if not b.have[k] then
        b.flat:narrow(1, b.offset[k] + 1, p:numel()):zero_()
        b.flat[b.numel + k] = 0
      end
    end
  end
  for bi = 1, #self.buckets do
    if bi > self.launched then self:_launch(bi) end
    self.handles[bi]:wait()
  end
  self.stats.wait_s = self.stats.wait_s + (mpi.wtime() - t0)
  self.stats.steps = self.stats.steps + 1
  glia.no_grad(function()
    for bi, b in ipairs(self.buckets) do
      for k, p in ipairs(b.params) do
        if b.flat[b.numel + k] > 0 then
          local g = b.flat:narrow(1, b.offset[k] + 1, p:numel()):view(p:shape())
          if p.grad then p.grad:copy_(g) else p.grad = g:clone() end
        else
          p.grad = nil
        end
      end
      b.filled, b.have = 0, {}
      self.stats.bytes = self.stats.bytes + 4 * (b.numel + #b.params)
    end
  end)
  self.handles, self.launched = {}, 0
  -- Statistics a module updates from its own batch outside the gradients
  -- (nn.MoE's routing counts for its balancing bias) are summed over the
  -- ranks here, so every rank applies the same update and the replicas stay
  -- equal. Every rank reaches this point with the same modules in the same
  -- order, so the collectives match.
  for _, m in ipairs(self.module:modules()) do
    if type(m.reduce_stats) == "function" then
      m:reduce_stats(function(t) dist.all_reduce(t, "sum") end)
    end
  end
end

-- The buckets as lists of parameter indices (1-based, registration order).
function DataParallel:bucket_layout()
  local index, out = {}, {}
  for i, p in ipairs(self.module:parameters()) do index[p] = i end
  for bi, b in ipairs(self.buckets) do
    out[bi] = {}
    for k, p in ipairs(b.params) do out[bi][k] = index[p] end
  end
  return out
end

return dist
