-- t/matmul.t -- matmul (every rank combination, strided and broadcast
-- operands, empty dims), addmm and linear against a naive triple loop in
-- Lua; their gradients by central differences; errors; thread determinism.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(42)

local max, concat = math.max, table.concat

-- ============================================================ reference

local function strides_of(shape)
  local s, acc = {}, 1
  for d = #shape, 1, -1 do s[d] = acc; acc = acc * shape[d] end
  return s
end

-- NumPy matmul of two tensors computed from their elements: flat result, shape.
local function ref_matmul(x, y)
  local A, B = t.flat(x, {}), t.flat(y, {})
  local sa, sb = x:shape(), y:shape()
  local a_vec, b_vec = #sa == 1, #sb == 1
  if a_vec then sa = {1, sa[1]} end
  if b_vec then sb = {sb[1], 1} end
  local N, K, M = sa[#sa - 1], sa[#sa], sb[#sb]
  local nba, nbb = #sa - 2, #sb - 2
  local nb = max(nba, nbb)
  local bsize, nbatch = {}, 1
  for d = 1, nb do
    local da, db = d - (nb - nba), d - (nb - nbb)
    local p, q = da >= 1 and sa[da] or 1, db >= 1 and sb[db] or 1
    bsize[d] = p == 1 and q or p
    nbatch = nbatch * bsize[d]
  end
  local sta, stb = strides_of(sa), strides_of(sb)
  local out = {}
  for bi = 0, nbatch - 1 do
    local rem, oa, ob = bi, 0, 0
    for d = nb, 1, -1 do
      local i = rem % bsize[d]
      rem = math.floor(rem / bsize[d])
      local da, db = d - (nb - nba), d - (nb - nbb)
      if da >= 1 and sa[da] ~= 1 then oa = oa + i * sta[da] end
      if db >= 1 and sb[db] ~= 1 then ob = ob + i * stb[db] end
    end
    for i = 0, N - 1 do
      for j = 0, M - 1 do
        local s = 0
        for k = 0, K - 1 do s = s + A[oa + i * K + k + 1] * B[ob + k * M + j + 1] end
        out[#out + 1] = s
      end
    end
  end
  local shape = {}
  for d = 1, nb do shape[d] = bsize[d] end
  if not a_vec then shape[#shape + 1] = N end
  if not b_vec then shape[#shape + 1] = M end
  return out, shape
end

-- got (a tensor) has shape `shape` and elements within tol of `want`.
local function same(got, want, shape, tol, desc)
  local gs, ws = concat(got:shape(), ","), concat(shape, ",")
  if gs ~= ws then
    t.ok(false, desc)
    return t.diag("shape " .. gs .. ", want " .. ws)
  end
  t.near(got, want, tol, desc)
end

local function check_matmul(x, y, desc)
  local want, shape = ref_matmul(x, y)
  same(glia.matmul(x, y), want, shape, 1e-4, desc)
end

local randn = glia.randn

-- ============================================================ ranks

check_matmul(randn(5), randn(5), "1-D x 1-D is a dot product")
t.is(glia.matmul(randn(5), randn(5)):dim(), 0, "1-D x 1-D gives a 0-d tensor")
check_matmul(randn(3, 4), randn(4, 5), "2-D x 2-D matches the naive product")
check_matmul(randn(4), randn(4, 3), "1-D x 2-D prepends then removes a row dim")
check_matmul(randn(3, 4), randn(4), "2-D x 1-D appends then removes a column dim")
check_matmul(randn(2, 3, 4), randn(2, 4, 5), "3-D x 3-D multiplies batch by batch")
check_matmul(randn(2, 3, 4), randn(4, 5), "3-D x 2-D broadcasts the matrix over the batch")
check_matmul(randn(3, 4), randn(2, 4, 5), "2-D x 3-D broadcasts the matrix over the batch")
check_matmul(randn(4), randn(2, 4, 5), "1-D x 3-D gives one row per batch")
check_matmul(randn(2, 3, 4), randn(4), "3-D x 1-D gives one column per batch")
check_matmul(randn(2, 1, 3, 4), randn(3, 4, 5), "batch dims broadcast: {2,1,3,4} x {3,4,5}")
check_matmul(randn(1, 3, 2, 4), randn(2, 1, 4, 3), "batch dims broadcast on both sides")
check_matmul(randn(1, 1, 4), randn(3, 4, 2), "size-1 batch and row dims broadcast")

-- ============================================================ strides

check_matmul(randn(4, 3):t(), randn(5, 4):t(), "transposed operands give the naive product")
check_matmul(randn(4, 9):narrow(2, 3, 5), randn(5, 7):narrow(2, 2, 3),
             "narrowed operands (row stride > columns) give the naive product")
check_matmul(randn(6, 4):narrow(1, 2, 3):t(), randn(3, 6):t():narrow(1, 2, 3),
             "narrowed transposed operands give the naive product")
check_matmul(randn(3, 4, 2):select(3, 1), randn(4, 2),
             "an operand with no unit stride is copied and gives the naive product")
check_matmul(randn(1, 4):expand(3, 4), randn(4, 1):expand(4, 5),
             "expanded (stride 0) matrices give the naive product")
check_matmul(randn(1, 3, 4):expand(5, 3, 4), randn(5, 4, 2),
             "an expanded batch dim gives the naive product")
check_matmul(randn(2, 4, 3):transpose(2, 3), randn(4, 2, 5):transpose(1, 2),
             "batched transposed operands give the naive product")
check_matmul(randn(3, 2, 4):transpose(1, 2), randn(4, 5),
             "a batch that cannot fold into rows gives the naive product")
check_matmul(randn(6):narrow(1, 2, 4), randn(8, 3):narrow(1, 3, 4),
             "a narrowed vector gives the naive product")

-- One row or column of output on a matrix of >= 2^17 elements goes to sgemv.
local function check_big(x, y, desc)
  local want, shape = ref_matmul(x, y)
  same(glia.matmul(x, y), want, shape, 1e-3, desc)
end
check_big(randn(512), randn(512, 256), "vector x matrix (matrix-vector path) gives the naive product")
check_big(randn(512), randn(256, 512):t(), "vector x transposed matrix gives the naive product")
check_big(randn(512, 2):select(2, 1), randn(512, 256), "a strided vector x matrix gives the naive product")
check_big(randn(256, 512), randn(512), "matrix x vector gives the naive product")
check_big(randn(512, 256):t(), randn(512), "transposed matrix x vector gives the naive product")
check_big(randn(256, 512), randn(512, 3):select(2, 2), "matrix x strided vector gives the naive product")
-- Rows of the matrix dotted with a contiguous vector go to glia's own
-- kernel, at any size: four vector accumulators, whole vectors, then tails.
check_big(randn(1, 29), randn(29, 37), "a 1 x 29 row times 29 x 37 (odd tails) gives the naive product")
check_big(randn(37, 29), randn(29, 1), "37 x 29 times a 29 x 1 column gives the naive product")
check_big(randn(1003, 1001), randn(1001), "1003 x 1001 times a vector gives the naive product")
do
  local x, w, b = randn(1, 1001), randn(1003, 1001), randn(1003)
  local want, bv = ref_matmul(x, w:t()), t.flat(b, {})
  for i = 1, #want do want[i] = want[i] + bv[i] end
  same(glia.linear(x, w, b), want, { 1, 1003 }, 1e-3,
       "a one-row linear with bias, 1003 outputs of 1001 inputs, gives the naive result")
  local c = randn(1, 1003)
  local cv, prod = t.flat(c, {}), ref_matmul(x, w:t())
  for i = 1, #prod do prod[i] = 0.5 * cv[i] + 2 * prod[i] end
  same(glia.addmm(c, x, w:t(), 0.5, 2), prod, { 1, 1003 }, 1e-3,
       "addmm of one row with beta 0.5 and alpha 2 gives the naive result")
  local nan = glia.full({ 1, 1003 }, 0 / 0)
  same(glia.addmm(nan, x, w:t(), 0, 1), ref_matmul(x, w:t()), { 1, 1003 }, 1e-3,
       "addmm with beta 0 ignores an input of NaNs on the matrix-vector path")
  local xs, bs = randn(1001, 2):select(2, 1):view(1, 1001), randn(1003, 2):select(2, 2)
  local want2, bsv = ref_matmul(xs, w:t()), t.flat(bs, {})
  for i = 1, #want2 do want2[i] = want2[i] + bsv[i] end
  same(glia.linear(xs, w, bs), want2, { 1, 1003 }, 1e-3,
       "a one-row linear of a strided row and a strided bias gives the naive result")
  t.near(glia.linear(glia.zeros(2, 0), glia.zeros(3, 0), glia.ones(3)),
         { { 1, 1, 1 }, { 1, 1, 1 } }, 0,
         "a linear over 0 inputs of 2 rows gives the bias in every row")
  t.is(glia.linear(glia.zeros(0, 0), glia.zeros(100, 0)):numel(), 0,
       "a linear of 0 rows over 0 inputs gives an empty result")
  local r = u.by_threads(function() return glia.linear(x, w, b) end)
  t.ok(u.identical(r[1], r[2]), "a one-row linear gives the same bits on 1 and 2 threads")
end
check_big(randn(4, 1, 512), randn(4, 512, 256), "a batch of one-row products gives the naive product")
check_big(randn(2, 256, 512), randn(2, 512, 1), "a batch of one-column products gives the naive product")

do
  local x, w = randn(1, 512):requires_grad(), randn(256, 512)
  local y = glia.linear(x, w)
  y:backward(glia.ones_like(y))
  local wv, want = w:totable(), {}
  for k = 1, 512 do
    local s = 0
    for j = 1, 256 do s = s + wv[j][k] end
    want[k] = s
  end
  t.near(x.grad, {want}, 1e-3, "the input gradient of a one-row linear (matrix-vector path) is g w")
end

-- Counts the allocations fn makes: the n-th one fails once n is small enough.
local function allocations(fn)
  for n = 1, 32 do
    glia.fail_alloc_after(n)
    local ok = pcall(fn)
    glia.fail_alloc_after(0)
    if ok then return n - 1 end
  end
end
do
  local x, y = randn(64, 32), randn(32, 16)
  local xt, yt, xn = randn(32, 64):t(), randn(16, 32):t(), randn(64, 40):narrow(2, 3, 32)
  local xe = randn(1, 32):expand(64, 32)
  local base = allocations(function() return glia.matmul(x, y) end)
  t.is(allocations(function() return glia.matmul(xt, yt) end), base,
       "transposed operands are read in place: no more allocations than contiguous ones")
  t.is(allocations(function() return glia.matmul(xn, y) end), base,
       "a narrowed operand is read in place through its leading dimension")
  t.ok(allocations(function() return glia.matmul(xe, y) end) > base,
       "an expanded matrix is copied (the allocation count sees copies)")
end

-- ============================================================ empty dims

do
  glia.full({3, 4}, 0 / 0):free() -- leave NaN in the allocator's cache
  local z = glia.matmul(randn(3, 0), randn(0, 4))
  same(z, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {3, 4}, 0, "K = 0 gives zeros")
  same(glia.matmul(randn(2, 0, 3), randn(3, 4)), {}, {2, 0, 4}, 0, "N = 0 gives an empty result")
  same(glia.matmul(randn(0, 2, 3), randn(3, 4)), {}, {0, 2, 4}, 0, "an empty batch gives an empty result")
  same(glia.matmul(randn(0), randn(0)), {0}, {}, 0, "an empty dot product is 0")
  local x = randn(3, 0):requires_grad()
  local w = randn(0, 4):requires_grad()
  local r = glia.matmul(x, w)
  r:backward(glia.ones_like(r))
  same(w.grad, {}, {0, 4}, 0, "the gradient of an empty operand is empty")
end

-- ============================================================ addmm, linear

do
  local c, x, y = randn(4), randn(3, 5), randn(5, 4)
  local prod = ref_matmul(x, y)
  local cv, want = t.flat(c, {}), {}
  for i = 1, #prod do want[i] = 0.5 * cv[(i - 1) % 4 + 1] + 2 * prod[i] end
  same(glia.addmm(c, x, y, 0.5, 2), want, {3, 4}, 1e-4, "addmm is beta c + alpha a b with c broadcast")
  for i = 1, #prod do want[i] = cv[(i - 1) % 4 + 1] + prod[i] end
  same(c:addmm(x, y), want, {3, 4}, 1e-4, "addmm defaults to beta = alpha = 1")
  same(glia.addmm(glia.full({3, 4}, 0 / 0), x, y, 0), prod, {3, 4}, 1e-4,
       "addmm with beta = 0 ignores c, even its NaNs")
end

-- x @ w^T + bias computed from elements.
local function ref_linear(x, w, bias)
  local want, shape = ref_matmul(x, w:t())
  if bias then
    local bv, n = t.flat(bias, {}), #t.flat(bias, {})
    for i = 1, #want do want[i] = want[i] + bv[(i - 1) % n + 1] end
  end
  return want, shape
end

local function check_linear(x, w, bias, desc)
  local want, shape = ref_linear(x, w, bias)
  same(glia.linear(x, w, bias), want, shape, 1e-4, desc)
end

check_linear(randn(3, 5), randn(4, 5), randn(4), "linear is x w^T + bias")
check_linear(randn(2, 3, 5), randn(4, 5), randn(4), "linear maps the last dim of a 3-D input")
check_linear(randn(5), randn(4, 5), randn(4), "linear of a vector gives a vector")
check_linear(randn(2, 3, 5), randn(4, 5), nil, "linear without a bias is x w^T")
check_linear(randn(3, 2, 5):transpose(1, 2), randn(5, 4):t(), randn(4),
             "linear accepts a transposed input and weight")
check_linear(randn(0, 5), randn(4, 5), randn(4), "linear of zero rows is empty")

-- ============================================================ gradients

-- eps 1e-3, atol = rtol = 1e-2: glia.gradcheck's defaults
local function gradcheck(fn, inputs, desc)
  return u.gradcheck(fn, inputs, desc .. " (f32 central differences, atol = rtol = 1e-2)")
end
local mm = glia.matmul

gradcheck(mm, {randn(3, 4), randn(4, 2)}, "matmul 2-D x 2-D has correct gradients")
gradcheck(mm, {randn(4), randn(4)}, "matmul 1-D x 1-D has correct gradients")
gradcheck(mm, {randn(4), randn(4, 3)}, "matmul 1-D x 2-D has correct gradients")
gradcheck(mm, {randn(3, 4), randn(4)}, "matmul 2-D x 1-D has correct gradients")
gradcheck(mm, {randn(2, 3, 4), randn(2, 4, 2)}, "batched matmul has correct gradients")
gradcheck(mm, {randn(2, 1, 3, 4), randn(3, 4, 2)},
          "matmul with broadcast batch dims has correct gradients on both sides")
gradcheck(mm, {randn(2, 3, 4), randn(4, 2)}, "a matrix broadcast over a batch gets the summed gradient")
gradcheck(mm, {randn(4), randn(2, 4, 3)}, "a vector broadcast over a batch gets the summed gradient")
gradcheck(function(x, y) return mm(x:t(), y:transpose(2, 3)) end, {randn(4, 3), randn(2, 5, 4)},
          "matmul of transposed views has correct gradients")
gradcheck(function(c, x, y) return glia.addmm(c, x, y, 0.5, 2) end, {randn(1, 3), randn(2, 4), randn(4, 3)},
          "addmm with beta, alpha and a broadcast c has correct gradients")
gradcheck(glia.linear, {randn(2, 3, 4), randn(5, 4), randn(5)}, "linear with bias on a 3-D input has correct gradients")
gradcheck(glia.linear, {randn(4), randn(3, 4)}, "linear without bias on a vector has correct gradients")
gradcheck(function(x, w, bias) return glia.linear(x:transpose(1, 2), w:t(), bias) end,
          {randn(3, 2, 4), randn(4, 5), randn(5)}, "linear of transposed views has correct gradients")

do
  local x, y = randn(3, 4):requires_grad(), randn(4, 2)
  local r = glia.matmul(x, y)
  r:backward(glia.ones_like(r))
  t.ok(x.grad ~= nil and y.grad == nil, "only the operand that requires grad gets a gradient")
  local want = {}
  local yv = y:totable()
  for i = 1, 3 do
    want[i] = {}
    for k = 1, 4 do want[i][k] = yv[k][1] + yv[k][2] end
  end
  t.near(x.grad, want, 1e-5, "d(sum(x y))/dx is the row sums of y, for every row")
end

-- ============================================================ out of memory

do
  -- fail the n-th allocation (and every later one) for n = 1, 2, ... until
  -- forward and backward succeed: each failing run must raise out of memory
  local x, w, bias = randn(3, 2, 4):transpose(1, 2), randn(1, 4):expand(5, 4), randn(5)
  local ok, err, n = u.survives_oom(function()
    local xr, wr, br = x:detach():requires_grad(), w:detach():requires_grad(), bias:detach():requires_grad()
    local y = glia.linear(xr, wr, br)
    y:backward(glia.ones_like(y))
    local z = glia.matmul(xr, wr:t())
    z:backward(glia.ones_like(z))
  end)
  if not t.ok(ok and n > 1,
              "linear and matmul with copied operands fail cleanly at every allocation (" .. (n - 1) .. " tried)") then
    t.diag(err)
  end
end

-- ============================================================ errors

t.error_like(function() mm(randn(2, 3), randn(4, 5)) end, "glia%.matmul: size mismatch, {2,3} x {4,5}",
             "a size mismatch names the op and both shapes")
t.error_like(function() mm(glia.tensor(2), randn(3)) end, "glia%.matmul: operands must be at least 1%-D",
             "a 0-d operand is refused")
t.error_like(function() mm(randn(2, 3):to("i64"), randn(3, 2)) end, "glia%.matmul: expected f32 tensors, got i64",
             "a non-f32 operand is refused with its dtype")
t.error_like(function() mm(randn(2, 3, 4), randn(3, 4, 5)) end,
             "glia%.matmul: batch dims do not broadcast, {2,3,4} x {3,4,5}",
             "batch dims that do not broadcast are refused")
t.error_like(function() glia.addmm(randn(3), randn(2, 2, 3), randn(3, 3)) end, "glia%.addmm: expected 2%-D",
             "addmm refuses batched operands")
t.error_like(function() glia.addmm(randn(5), randn(2, 3), randn(3, 4)) end,
             "glia%.addmm: input {5} does not match the product {2,3} x {3,4}",
             "addmm refuses a c that does not broadcast to the product")
t.error_like(function() glia.linear(randn(2, 5), randn(4, 6)) end, "glia%.linear: size mismatch, {2,5} x {4,6}",
             "linear names the input and weight shapes on a mismatch")
t.error_like(function() glia.linear(randn(2, 5), randn(5)) end, "glia%.linear: weight must be 2%-D",
             "linear refuses a weight that is not 2-D")
t.error_like(function() glia.linear(randn(2, 5), randn(4, 5), randn(3)) end,
             "glia%.linear: bias {3} does not match",
             "linear refuses a bias of the wrong size")

-- ============================================================ threads
-- What glia promises (README, "Determinism"): bit-identical results run to run
-- for a fixed thread count; across thread counts, for glia's own kernels and
-- for batches of GEMMs that the pool splits evenly (one single-threaded
-- OpenBLAS call per task). One GEMM on OpenBLAS's threads is not promised the
-- same bits for another thread count (OpenBLAS does not promise it, and
-- kernels differ: Haswell's does not, SkylakeX's does), only rounding-close.

do
  -- fn's results (tables) on 1 and 2 threads differ nowhere
  local function same_on_threads(fn, desc)
    local r = u.by_threads(fn)
    t.is(t.maxdiff(r[1], r[2]), 0, desc)
  end
  -- fn's results on 2 threads are the same bits twice, and on 1 thread
  -- within tol of them
  local function fixed_count_identical(fn, tol, desc)
    local r = u.by_threads(fn, { 2 })[2]
    local again = u.by_threads(fn, { 2 })[2]
    t.is(t.maxdiff(r, again), 0, desc .. " are identical run to run with 2 threads")
    local one = u.by_threads(fn, { 1 })[1]
    local d = t.maxdiff(r, one)
    t.ok(d <= tol, desc .. " on 1 thread agree with 2 threads to rounding (max diff " .. d .. ")")
  end
  local function run(x, y)
    return function()
      local xr, yr = x:detach():requires_grad(), y:detach():requires_grad()
      local r = glia.matmul(xr, yr)
      r:backward(glia.ones_like(r))
      return {r:totable(), xr.grad:totable(), yr.grad:totable()}
    end
  end
  same_on_threads(run(randn(16, 24, 20), randn(16, 20, 12)),
                  "a batched matmul and its gradients (a batch split evenly over the pool) are identical with 1 and 2 threads")
  same_on_threads(run(randn(4, 1, 24, 20), randn(3, 20, 12)),
                  "a broadcast batched matmul and its gradients are identical with 1 and 2 threads")
  -- entries are sums of 200 (or 250) products of N(0,1) numbers: about 15 in size
  fixed_count_identical(run(randn(300, 200), randn(200, 250)), 1e-3,
                        "a large matmul and its gradients")
  local xs, w, bias = randn(4, 64, 32), randn(1024, 32), randn(1024)
  fixed_count_identical(function()
    local xr, wr, br = xs:detach():requires_grad(), w:detach():requires_grad(), bias:detach():requires_grad()
    local r = glia.linear(xr, wr, br)
    r:backward(glia.ones_like(r))
    return {r:totable(), xr.grad:totable(), wr.grad:totable(), br.grad:totable()}
  end, 1e-3, "linear and its gradients (bias column sums included)")
end

t.done()
