-- t/util.lua -- glia-specific helpers shared by the Lua tests (t/tap.lua
-- stays a plain TAP producer). Like t.error_like, a helper that asserts
-- takes the description after what it checks, and prints why it failed as
-- a diagnostic.
--   local u = require "t.util"
--   u.identical(a, b)  u.f32_near(got, want, atol, rtol)  u.same_shape(a, b)
--   u.seed(n)  u.spread(shape, lo, hi [, u0])  u.norm_ref(rows, w, b, eps, center)  u.erf(x)
--   u.by_threads(fn [, counts])  u.gradcheck(fn, inputs, desc [, opts])
--   u.gradcheck_f64(fn, ref, inputs, desc [, opts])  u.check_grad_f64(fn, ref, inputs [, opts])
--   u.survives_oom(fn [, limit])  u.oom_ok(fn, desc)
--   u.sh(cmd)  u.sh_quote(s)  u.slurp(path)  u.spit(path, s)
--   u.root()  u.exe()  u.skip_all(why)  u.write_fmnist(dir, prefix, n, rng)
local t = require "t.tap"
local glia = require "glia"

local abs, huge = math.abs, math.huge
local unpack = table.unpack or unpack
local FLT_MAX = 3.4028234663852886e38

local M = {}

-- ========================================================= comparisons

-- Whether a and b (numbers, booleans, nested tables or tensors) hold the
-- same values in the same order, to the bit; NaN equals NaN.
function M.identical(a, b)
  local fa, fb = t.flat(a, {}), t.flat(b, {})
  if #fa ~= #fb then return false end
  for i = 1, #fa do
    local x, y = fa[i], fb[i]
    if x ~= y and not (x ~= x and y ~= y) then return false end
  end
  return true
end

-- Whether got, one element of an f32 result, matches want, its double
-- reference: NaN for NaN, want rounded to +-inf past the f32 range, a
-- boolean for a boolean, else |got - want| <= atol + rtol |want|.
function M.f32_near(got, want, atol, rtol)
  if type(want) == "boolean" then return got == want end
  if want ~= want then return got ~= got end
  if abs(want) > FLT_MAX then want = want > 0 and huge or -huge end
  if abs(want) == huge then return got == want end
  return type(got) == "number" and abs(got - want) <= atol + rtol * abs(want)
end

local function sizes(v) return type(v) == "table" and v or v:shape() end

-- Whether a and b (tensors or tables of sizes) have the same shape.
function M.same_shape(a, b)
  local sa, sb = sizes(a), sizes(b)
  if #sa ~= #sb then return false end
  for i = 1, #sa do if sa[i] ~= sb[i] then return false end end
  return true
end

-- ========================================================= test values

-- Seeds glia's generator with n and prints the seed, so that a failing
-- random test can be replayed; returns n.
function M.seed(n)
  glia.manual_seed(n)
  t.diag("seed " .. n)
  return n
end

-- A nested table of the given shape with values spread over [lo, hi] in a
-- scrambled order (golden-ratio steps from u0, 0.5 by default).
function M.spread(shape, lo, hi, u0)
  local u = u0 or 0.5
  local function build(d)
    if d > #shape then
      u = (u + 0.6180339887498949) % 1
      return lo + (hi - lo) * u
    end
    local r = {}
    for i = 1, shape[d] do r[i] = build(d + 1) end
    return r
  end
  return build(1)
end

-- ========================================================== references

-- layer_norm (center true) or rms_norm (center false) of each row of rows
-- (a table of tables), in doubles; w and b are tables or nil.
function M.norm_ref(rows, w, b, eps, center)
  local out = {}
  for r = 1, #rows do
    local x, C = rows[r], #rows[r]
    local m, v = 0, 0
    if center then
      for c = 1, C do m = m + x[c] end
      m = m / C
    end
    for c = 1, C do v = v + (x[c] - m) ^ 2 end
    local rs = 1 / math.sqrt(v / C + eps)
    out[r] = {}
    for c = 1, C do
      out[r][c] = (x[c] - m) * rs * (w and w[c] or 1) + (b and b[c] or 0)
    end
  end
  return out
end

-- ======================================================= thread counts

-- Runs fn(n) with the pool at each thread count n of counts ({1, 2} by
-- default), then restores the count it found. Returns fn's results, each
-- at the index of its thread count.
function M.by_threads(fn, counts)
  local old, res = glia.num_threads(), {}
  for _, n in ipairs(counts or { 1, 2 }) do
    glia.set_num_threads(n)
    res[n] = fn(n)
  end
  glia.set_num_threads(old)
  return res
end

-- =========================================================== gradients

-- One test line: glia.gradcheck(fn, inputs, opts) passes (f32 central
-- differences; by default eps 1e-3, atol = rtol = 1e-2).
function M.gradcheck(fn, inputs, desc, opts)
  local ok, why = glia.gradcheck(fn, inputs, opts)
  if not t.ok(ok, desc) then t.diag(why) end
  return ok
end

-- The leaves of a nested table as {table, index} pairs, in order.
local function leaf_slots(v, out)
  for i = 1, #v do
    if type(v[i]) == "table" then leaf_slots(v[i], out) else out[#out + 1] = { v, i } end
  end
  return out
end

-- glia's gradient check in double precision; returns true, or false and
-- why it failed (u.gradcheck_f64 makes it a test line). glia computes
-- in f32 only, so the f64 side is `ref`, the same function written naively
-- over nested Lua tables of doubles (one per input; it returns a nested
-- table or a number). The gradient autograd gives fn at `inputs` (f32
-- tensors) must match central differences of ref in f64 (eps 1e-6, no f32
-- rounding in them) to f32 accuracy: per input, every element within
-- rtol (1e-4) of that input's largest gradient entry (or atol, 1e-6, for an
-- all-zero gradient). fn's forward must match ref to 1e-4 of its scale.
-- This is far tighter than u.gradcheck, whose differences are taken in f32.
function M.check_grad_f64(fn, ref, inputs, opts)
  opts = opts or {}
  local eps, rtol, atol = opts.eps or 1e-6, opts.rtol or 1e-4, opts.atol or 1e-6
  for _, x in ipairs(inputs) do x:zero_grad() x:requires_grad() end
  local out = fn(unpack(inputs))
  local w = glia.randn(out:shape())
  local wv, ov = t.flat(w, {}), t.flat(out, {})
  out:mul(w):sum():backward()
  local args = {}
  for k, x in ipairs(inputs) do args[k] = x:dim() == 0 and x:item() or x:totable() end
  local nargs = #inputs
  local function objective()
    local r = t.flat(ref(unpack(args, 1, nargs)), {})
    if #r ~= #wv then error(("ref returned %d values, fn %d"):format(#r, #wv)) end
    local s = 0
    for i = 1, #r do s = s + r[i] * wv[i] end
    return s, r
  end
  local _, r0 = objective()
  local oscale, odiff = 0, 0
  for i = 1, #r0 do
    oscale = math.max(oscale, abs(r0[i]))
    odiff = math.max(odiff, abs(r0[i] - ov[i]))
  end
  if odiff > 1e-4 * math.max(oscale, 1e-3) then
    return false, ("forward: fn and ref differ by %.3g (ref's scale %.3g)"):format(odiff, oscale)
  end
  for k, x in ipairs(inputs) do
    local analytic = x.grad and t.flat(x.grad, {}) or {}
    local numeric = {}
    local function perturb(set)
      if type(args[k]) == "number" then
        local v0 = args[k]
        args[k] = v0 + eps; local fp = objective()
        args[k] = v0 - eps; local fm = objective()
        args[k] = v0
        numeric[1] = (fp - fm) / (2 * eps)
        return
      end
      for i, slot in ipairs(set) do
        local tb, j = slot[1], slot[2]
        local v0 = tb[j]
        tb[j] = v0 + eps; local fp = objective()
        tb[j] = v0 - eps; local fm = objective()
        tb[j] = v0
        numeric[i] = (fp - fm) / (2 * eps)
      end
    end
    perturb(type(args[k]) == "table" and leaf_slots(args[k], {}) or nil)
    local scale = 0
    for i = 1, #numeric do scale = math.max(scale, abs(numeric[i])) end
    local tol = math.max(rtol * scale, atol)
    for i = 1, #numeric do
      local a = analytic[i] or 0
      if not (abs(a - numeric[i]) <= tol) then
        return false, ("input %d, element %d: f64 numeric %.9g, autograd %.9g (tolerance %.3g)")
                    :format(k, i, numeric[i], a, tol)
      end
    end
  end
  return true
end

-- One test line: check_grad_f64 passes.
function M.gradcheck_f64(fn, ref, inputs, desc, opts)
  local ok, why = M.check_grad_f64(fn, ref, inputs, opts)
  if not t.ok(ok, desc) then t.diag(why) end
  return ok
end

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

-- erf(x) in doubles to ~1e-15: its series below 2.5, the continued
-- fraction of erfc above (Lua has no math.erf).
function M.erf(x)
  local ax = abs(x)
  local r
  if ax < 2.5 then
    local term, sum, n = ax, ax, 0
    repeat
      n = n + 1
      term = -term * ax * ax / n
      local add = term / (2 * n + 1)
      sum = sum + add
    until abs(add) <= 1e-17 * abs(sum) or n > 200
    r = 2 / math.sqrt(math.pi) * sum
  else
    local f = 0
    for n = 60, 1, -1 do f = (n / 2) / (ax + f) end
    r = 1 - math.exp(-ax * ax) / math.sqrt(math.pi) / (ax + f)
  end
  return x < 0 and -r or r
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

-- Writes n Fashion-MNIST-shaped images and labels as DIR/<prefix>-images-idx3-ubyte.gz
-- and DIR/<prefix>-labels-idx1-ubyte.gz ("train" or "t10k"): 28x28 images of class
-- (i*7 % 10) whose rows 2c+4 and 2c+5 are bright over noise drawn from rng
-- (a glia.data.Generator), so a few epochs learn the rule. The files are
-- plain, not gzipped, under the .gz names: zlib reads both.
function M.write_fmnist(dir, prefix, n, rng)
  local char, floor, concat = string.char, math.floor, table.concat
  local function be32(v) -- a big-endian u32, as IDX headers store sizes
    return char(floor(v / 16777216) % 256, floor(v / 65536) % 256, floor(v / 256) % 256, v % 256)
  end
  local images, labels = { "\0\0\8\3" .. be32(n) .. be32(28) .. be32(28) }, { "\0\0\8\1" .. be32(n) }
  for i = 1, n do
    local c = (i * 7) % 10
    local px = {}
    for p = 1, 784 do
      local row = floor((p - 1) / 28)
      px[p] = (row == 2 * c + 4 or row == 2 * c + 5) and 255 or rng:random(100) - 1
    end
    images[#images + 1] = char(unpack(px))
    labels[#labels + 1] = char(c)
  end
  M.spit(dir .. "/" .. prefix .. "-images-idx3-ubyte.gz", concat(images))
  M.spit(dir .. "/" .. prefix .. "-labels-idx1-ubyte.gz", concat(labels))
end

-- Ends a test file that cannot run here with one skipped test.
function M.skip_all(why)
  t.ok(true, "# skip " .. why)
  t.done()
  os.exit(0)
end

return M
