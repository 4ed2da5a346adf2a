-- t/alloc_sweep.t -- allocation-failure sweeps: a forward and backward pass
-- of each op family, and saving and loading, survive the failure of any one
-- of their allocations.
--
-- What is swept: every allocation that goes through the context (vm/ctx.c's
-- glia_alloc, tensor data, and glia_malloc, tensor and autograd structs).
-- glia.fail_alloc_after(n) makes the n-th allocation fail and, sticky, every
-- later one until it is reset, so the binding's retry of a failed op after
-- a full collection fails too: the failure really reaches the op, and the
-- script sees it. Each workload runs with n = 1, 2, ... until it succeeds;
-- the n it succeeds at, less one, is the number of allocations it makes.
-- Lua's own allocations (tables, strings) are not swept.
--
-- After each failure: the error says "out of memory" (glia.load and
-- glia.save return nil and such a message instead of raising); after a full
-- collection the context's live bytes are back where they were before the
-- run (the sanitizer flavor checks malloc'd structs with LeakSanitizer); and
-- a small op still gives its right result. The run that finally succeeds
-- must give bit for bit the result of a run without failures. Then each
-- allocation fails alone (glia.fail_alloc_once): the binding's retry of
-- an op after a full collection succeeds, and a run that recovers so must
-- still give that result (an in-place op half applied, then retried, would
-- not). Each workload's allocation count is printed as a diagnostic.
package.path = "./?.lua;" .. package.path
local t = require "t.tap"
local u = require "t.util"
local glia = require "glia"
local nn = require "glia.nn"
local optim = require "glia.optim"
local checkpoint = require "glia.checkpoint"

local fmt = string.format
local SEED = 1234
local LIMIT = 2000 -- no workload here makes this many allocations

-- Plain values of whatever a workload returned: tensors become tables.
local function plain(v)
  if glia.is_tensor(v) then return v:totable() end
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = plain(x) end
  return out
end

local function same(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
  for k, x in pairs(a) do if not same(x, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function full_gc()
  collectgarbage()
  collectgarbage()
end

-- Clears the gradients of leaves (backward accumulates into them).
local function fresh(leaves)
  for _, x in ipairs(leaves) do x.grad = nil end
end

-- One run of fn with an allocation failing (set by inject(n)); returns
-- whether it succeeded, or nil and what went wrong. A run that fails must
-- raise "out of memory"; one that succeeds must give want; either way the
-- context then holds base live bytes after a collection, and works.
local function trial(fn, leaves, inject, n, want, base)
  glia.manual_seed(SEED)
  fresh(leaves)
  inject(n)
  local ok, got = pcall(fn)
  glia.fail_alloc_after(0)
  if ok then
    got = plain(got)
    if not same(got, want) then return nil, "the run succeeded with another result" end
  elseif not tostring(got):find("out of memory", 1, true) then
    return nil, "not an out-of-memory error: " .. tostring(got)
  end
  got = nil
  fresh(leaves)
  full_gc()
  local live = glia.memory().live
  if live ~= base then
    return nil, fmt("%d live bytes after a collection, %d before (%s)", live, base,
                    ok and "it succeeded" or "it raised")
  end
  local check = (glia.arange(4) * 2):sum():item()
  if check ~= 12 then return nil, "then (arange(4) * 2):sum() is " .. tostring(check) end
  return ok
end

-- Sweeps fn (which returns a value to compare) on leaves (tensors created
-- once, outside the sweep, whose gradients are cleared before each run);
-- one test line per workload. First the n-th allocation and all later ones
-- fail, for n = 1, 2, ... until a run succeeds: n - 1 is the number of
-- allocations. Then the n-th alone fails, for each of those n: the
-- binding retries an op that ran out of memory once, so most of these runs
-- succeed, and their result must not show the failed attempt.
local function sweep(name, leaves, fn)
  glia.manual_seed(SEED)
  local want = plain(fn())
  fresh(leaves)
  full_gc()
  local base = glia.memory().live
  local count, problem
  for n = 1, LIMIT do
    local ok, why = trial(fn, leaves, glia.fail_alloc_after, n, want, base)
    if why then
      problem = fmt("allocation %d and later failing: %s", n, why)
      break
    end
    if ok then
      count = n - 1
      break
    end
  end
  if not count and not problem then problem = "never succeeded in " .. LIMIT .. " tries" end
  local recovered = 0
  for n = 1, problem and 0 or count do
    local ok, why = trial(fn, leaves, glia.fail_alloc_once, n, want, base)
    if why then
      problem = fmt("allocation %d alone failing: %s", n, why)
      break
    end
    if ok then recovered = recovered + 1 end
  end
  if not problem then
    t.diag(fmt("%s: %d allocations; with one failing, %d runs recover", name, count, recovered))
  end
  if not t.ok(not problem, name .. " survives the failure of each of its allocations") then
    t.diag(problem)
  end
end

local function leaf(...)
  glia.manual_seed(SEED)
  return glia.randn(...):requires_grad()
end
local function grads(...)
  local out = {}
  for i, x in ipairs({ ... }) do out[i] = x.grad end
  return out
end

-- ================================================================ op families

do
  sweep("creation", {}, function()
    local a = glia.zeros(3, 4) + glia.ones(3, 4) + glia.full({ 3, 4 }, 2)
    local b = glia.arange(12):reshape(3, 4):to("f32") + glia.randn(3, 4) + glia.rand(3, 4)
    local x = glia.tensor({ { 1, 2, 3, 4 } }):requires_grad()
    local y = (a * b * x):sum()
    y:backward()
    return { y, x.grad }
  end)
end

do
  local x = leaf(4, 6)
  sweep("view", { x }, function()
    local v = x:reshape(2, 12):transpose(1, 2):narrow(1, 2, 6):permute(2, 1)
    local s = x:select(1, 2):expand(3, 6)
    local y = (v:contiguous():sum() + (s * s):sum() + x:view(24):sum())
    y:backward()
    return { y, x.grad }
  end)
end

do
  local a, b = leaf(3, 4), leaf(1, 4)
  sweep("elementwise", { a, b }, function()
    local y = ((a + b) * (a - b) / (b * b + 1) + a * 3 - 2):pow(2):sum()
    y:backward()
    return { y, grads(a, b) }
  end)
end

do
  local x = leaf(3, 5)
  sweep("unary", { x }, function()
    local y = (x:exp() + x:tanh() + x:relu() + x:gelu() + x:sigmoid() + (x:abs() + 1):log()
               + x:neg() + (x * x):sqrt()):sum()
    y:backward()
    return { y, x.grad }
  end)
end

do
  local x = leaf(3, 4, 5)
  sweep("reduce/softmax", { x }, function()
    local y = x:sum(2):sum() + x:mean(3):sum() + x:max(1):sum() + x:softmax(3):pow(2):sum()
              + x:log_softmax(2):sum() + x:var():sum()
    y:backward()
    return { y, x.grad }
  end)
end

do
  local a, b, c = leaf(5, 7), leaf(7, 3), leaf(2, 5, 7)
  sweep("matmul", { a, b, c }, function()
    local y = a:matmul(b):sum() + c:matmul(b):pow(2):sum() + a:matmul(b):t():matmul(a):sum()
    y:backward()
    return { y, grads(a, b, c) }
  end)
end

do
  local w, x = leaf(10, 4), leaf(3, 4)
  local ids = glia.tensor({ { 1, 5, 2 }, { 9, 9, 10 } }, "i64")
  local idx = glia.tensor({ 3, 1, 3 }, "i64")
  local gidx = glia.tensor({ { 1, 2, 3, 4 }, { 2, 2, 2, 2 }, { 4, 3, 2, 1 } }, "i64")
  sweep("index", { w, x }, function()
    local e = glia.embedding(ids, w)
    local y = e:pow(2):sum() + x:index_select(1, idx):sum() * 2 + x:gather(2, gidx):pow(2):sum()
              + x:cumsum(2):sum()
    y:backward()
    return { y, grads(w, x) }
  end)
end

do
  local a, b = leaf(2, 3), leaf(2, 5)
  sweep("join", { a, b }, function()
    local c = glia.cat({ a, b, a }, 2)
    local s = glia.stack({ a, a * 2 }, 1)
    local y = c:pow(2):sum() + s:pow(3):sum()
    y:backward()
    return { y, grads(a, b) }
  end)
end

do
  local logits, pred = leaf(4, 6), leaf(4, 3)
  local target, y = glia.tensor({ 1, 6, 3, 2 }, "i64"), glia.randn(4, 3)
  sweep("loss", { logits, pred }, function()
    local l = glia.cross_entropy(logits, target) + glia.cross_entropy(logits, target, nil, nil, "sum")
              + glia.mse(pred, y)
    l:backward()
    return { l, grads(logits, pred) }
  end)
end

do
  local x, w, b = leaf(3, 8), leaf(8), leaf(8)
  sweep("norm", { x, w, b }, function()
    local y = glia.layer_norm(x, w, b):pow(2):sum() + glia.rms_norm(x, w):pow(3):sum()
              + glia.dropout(x, 0.5, true):sum()
    y:backward()
    return { y, grads(x, w, b) }
  end)
end

do
  local q, k, v = leaf(2, 2, 5, 4), leaf(2, 2, 5, 4), leaf(2, 2, 5, 4)
  sweep("attention", { q, k, v }, function()
    local y = glia.attention(q, k, v, true):pow(2):sum() + glia.attention(q, k, v, false):sum()
    y:backward()
    return { y, grads(q, k, v) }
  end)
end

do
  local C, H = 16, 2
  glia.manual_seed(SEED)
  local blk = nn.TransformerBlock(C, H, { kv_heads = 1 })
  blk:eval()
  local x, x2 = glia.randn(2, 3, C), glia.randn(2, 1, C)
  -- a cached decode in eval mode takes the fused op: counted, to be sure
  local decoder_block, fused = glia.decoder_block, 0
  glia.decoder_block = function(...)
    fused = fused + 1
    return decoder_block(...)
  end
  sweep("block (decoder_block)", {}, function()
    return glia.no_grad(function()
      local cache = blk:new_cache(2, 8)
      return glia.cat({ blk(x, cache), blk(x2, cache) }, 2)
    end)
  end)
  glia.decoder_block = decoder_block
  t.ok(fused > 0, "the block sweep went through glia.decoder_block")
  sweep("block (forward and backward)", blk:parameters(), function()
    local y = blk(x):pow(2):sum()
    y:backward()
    return { y, blk.fc.weight.grad, blk.ln1.weight.grad }
  end)
end

do
  glia.manual_seed(SEED)
  local init = nn.Linear(6, 4)
  local x = glia.randn(5, 6)
  sweep("optim (AdamW, two steps)", {}, function()
    local m = nn.Linear(6, 4)
    glia.no_grad(function()
      m.weight:copy_(init.weight)
      m.bias:copy_(init.bias)
    end)
    local opt = optim.AdamW(m:parameters(), { lr = 0.1 })
    for _ = 1, 2 do
      opt:zero_grad()
      m(x):pow(2):sum():backward()
      opt:step()
    end
    return { m.weight, m.bias }
  end)
end

-- ============================================================ save and load

local dir = os.tmpname()
os.remove(dir)
assert(checkpoint.make_dir(dir))
local path = dir .. "/sweep.safetensors"

-- glia.save and glia.load report failures from outside as nil and a
-- message; here the only failure is memory.
local function must(ok, msg)
  if not ok then error(msg, 2) end
  return ok
end

do
  glia.manual_seed(SEED)
  local tensors = { w = glia.randn(6, 5), b = glia.arange(7):to("i64"),
                    s = glia.randn(4, 6):t(), m = glia.tensor({ 1, 0 }, "bool") }
  sweep("glia.save", {}, function()
    must(glia.save(path, tensors, { note = "sweep" }))
    return true
  end)
  for _, opts in ipairs({ { name = "glia.load", o = nil }, { name = "glia.load mmap", o = { mmap = true } } }) do
    sweep(opts.name, {}, function()
      local got, meta = glia.load(path, opts.o)
      must(got, meta)
      return { got, meta }
    end)
  end
end

do
  glia.manual_seed(SEED)
  local m = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
  local opt = optim.AdamW(m:parameters(), { lr = 0.01 })
  m(glia.randn(3, 4)):sum():backward()
  opt:step()
  sweep("checkpoint.save", {}, function()
    must(checkpoint.save(dir, { model = m, optimizer = opt, step = 7, extra = { k = "v" } }))
    return true
  end)
  sweep("checkpoint.load", {}, function()
    local m2 = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    local opt2 = optim.AdamW(m2:parameters(), { lr = 0.01 })
    local step, extra = checkpoint.load(dir, { model = m2, optimizer = opt2 })
    must(step, extra)
    return { step, extra, m2:state_dict(), (opt2:state_dict("opt")) }
  end)
end

os.execute("rm -rf " .. u.sh_quote(dir))
t.done()
