-- t/tools/fuzz.lua -- random calls into glia, mostly with wrong arguments,
-- the way SQLite and Lua fuzz their APIs. Run by t/fuzz.t in a child
-- process (so that a crash or a sanitizer report is a failed test, not a
-- dead prove), or by hand to reproduce a failure:
--
--   bin/glia t/tools/fuzz.lua SEED CALLS [DIR]
--
-- DIR is a scratch directory for glia.save/load (made and removed by the
-- caller; without it file calls are skipped). Every call is printed, with
-- its number, before it is made, so the last line printed before a crash
-- names the call; the same SEED and CALLS replay the same calls.
--
-- What is called: every function of the `glia` table and every tensor
-- method, enumerated at run time (a new op is fuzzed without an edit
-- here), the tensor metamethods, `.grad` reads and assignments, backward
-- passes on results, and the main entry points of the stdlib modules
-- (nn module constructors and forward, optimizer steps, data, kv_cache,
-- save/load, checkpoint). Arguments are tensors of every dtype and many
-- layouts (0-size, 0-D, transposed, strided, expanded, narrowed, freed,
-- requiring grad), edge numbers (NaN, +-inf, 2^53, 1e12, -1, 0, huge dims),
-- strings, tables, nil, booleans and functions. Each call runs under pcall:
-- a Lua error is a correct answer to a wrong call; only a crash, a
-- sanitizer report or a leak fails.
--
-- Memory: the caller bounds the process (ulimit -v, or ASan's
-- max_allocation_size_mb with allocator_may_return_null), so an absurd size
-- is an out-of-memory error here; tensors the fuzzer keeps are small.
local glia = require "glia"

local SEED = tonumber(arg[1]) or 1
local CALLS = tonumber(arg[2]) or 1000
local DIR = arg[3]

local unpack = table.unpack or unpack
local function pack(...) return { n = select("#", ...), ... } end
local fmt, concat, sort = string.format, table.concat, table.sort
local pcall, type, tostring, pairs, ipairs, select = pcall, type, tostring, pairs, ipairs, select
local floor, huge = math.floor, math.huge

io.stdout:setvbuf("line")

-- `.grad` assignments include wrong shapes and dtypes, views, and tensors
-- that would make a reference cycle (`x.grad = x`, `x.grad = x * 2`);
-- FUZZ_BAD_GRAD=0 assigns only fresh gradients of the tensor's own shape.
local BAD_GRAD = os.getenv("FUZZ_BAD_GRAD") ~= "0"

-- ============================================================ randomness

-- Park-Miller: exact in doubles, so Lua 5.4 and LuaJIT draw the same.
local state = (SEED % 2147483646) + 1
local function rand()
  state = state * 16807 % 2147483647
  return state
end
local function below(n) return rand() % n end          -- 0..n-1
local function chance(p) return rand() < p * 2147483647 end
local function pick(list) return list[below(#list) + 1] end

glia.manual_seed(SEED)

-- ================================================================ values

local DTYPES = { "f32", "f64", "i64", "i32", "u8", "bool" }
local NAN = 0 / 0
local NUMBERS = { 0, 1, -1, 2, 3, 0.5, -0.5, 1e-3, 7, 16, NAN, huge, -huge, 2 ^ 53, -(2 ^ 53),
  2 ^ 53 + 2, 1e12, -1e12, 2 ^ 31, 2 ^ 31 - 1, -(2 ^ 31), 2 ^ 32, 2 ^ 62, 2 ^ 63, -(2 ^ 63), 2 ^ 64,
  1e308, -1e308, 1e-310, 2 ^ 40, 1.5, -7, 255, 256, -129, 4, 5, 8 }
if math.maxinteger then -- Lua 5.4: integers past 2^53 reach C as they are
  local int = math.tointeger -- (no integer syntax: LuaJIT parses this file too)
  for _, v in ipairs { math.maxinteger, math.mininteger, int(2 ^ 62), int(2 ^ 40),
                       int(2 ^ 53) + 1, int(2 ^ 31) } do
    NUMBERS[#NUMBERS + 1] = v
  end
end
local HUGE_EMPTY = os.getenv("FUZZ_HUGE_EMPTY") ~= "0"
local HUGE_DIMS = { 2 ^ 31, 2 ^ 40, 2 ^ 53, 1e12, math.maxinteger or 2 ^ 53 }
local SMALL = { 1, 2, 3, 4, -1, -2, 0 }
local STRINGS = { "f32", "f64", "i64", "i32", "u8", "bool", "", "abc", "sum", "mean", "none",
  "tanh", "exact", "\0", "1", "-1", "nan", "left", "right", ("x"):rep(300) }

local desc = setmetatable({}, { __mode = "k" }) -- tensor -> how it was made
local pool = {}                                 -- tensors kept between calls
local POOL = 24

local function show(v, depth)
  local ty = type(v)
  if ty == "number" then
    if math.type and math.type(v) == "integer" then return tostring(v) end
    if v ~= v then return "0/0" end
    if v == huge then return "math.huge" end
    if v == -huge then return "-math.huge" end
    if v == floor(v) and v > -2 ^ 63 and v < 2 ^ 63 then return fmt("%.0f", v) end
    return fmt("%.17g", v)
  elseif ty == "string" then
    return #v > 20 and fmt("(%q):rep(%d)", v:sub(1, 1), #v) or fmt("%q", v)
  elseif ty == "table" then
    depth = depth or 0
    if depth > 2 then return "{...}" end
    local parts = {}
    for i = 1, math.min(#v, 8) do parts[#parts + 1] = show(v[i], depth + 1) end
    if #v > 8 then parts[#parts + 1] = fmt("...(%d in all)", #v) end
    local keys = {}
    for k in pairs(v) do if type(k) ~= "number" then keys[#keys + 1] = tostring(k) end end
    sort(keys) -- the same text for the same table, whatever the order of pairs
    for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. show(v[k], depth + 1) end
    return "{" .. concat(parts, ",") .. "}"
  elseif ty == "userdata" then
    return desc[v] or "<tensor>"
  elseif ty == "function" then
    return "<fn>"
  end
  return tostring(v)
end

local function shape_table()
  local n, s = below(5), {}
  for i = 1, n do s[i] = below(5) == 0 and pick { 0, 1, 5 } or below(4) + 1 end
  -- Empty and huge along another dim: found size overflows and a cumsum
  -- that walked 1e12 empty columns; FUZZ_HUGE_EMPTY=0 turns it off.
  if n > 1 and HUGE_EMPTY and chance(0.05) then
    s[1], s[n] = 0, pick(HUGE_DIMS)
  end
  return s
end

local function fresh_tensor()
  local s, dt = shape_table(), chance(0.5) and "f32" or pick(DTYPES)
  local scale = chance(0.3) and pick { 10, 100, 1e30 } or 1
  local ok, x = pcall(function() return glia.randn(s):mul(scale):to(dt) end)
  if not ok then return nil end
  desc[x] = fmt("glia.randn(%s):mul(%s):to(%q)", show(s), show(scale), dt)
  return x
end

-- A view or a variant of x: the layouts kernels get wrong.
local VARIANTS = {
  function(x) return x:t() end,
  function(x) return x:transpose(1, -1) end,
  function(x) return x:narrow(1, 2, x:size(1) - 1) end,
  function(x) return x:select(1, 1) end,
  function(x) return x:unsqueeze(1):expand(3, unpack(x:shape())) end,
  function(x)
    local s = x:shape()
    s[#s + 1] = 2
    return x:unsqueeze(-1):expand_as(glia.zeros(s))
  end,
  function(x)
    local d = {}
    for i = 1, x:dim() do d[i] = x:dim() + 1 - i end
    return x:permute(d)
  end,
  function(x) return x:narrow(-1, 1, 1):transpose(1, -1) end,
  function(x) return x:reshape(-1) end,
  function(x) return x:contiguous() end,
  function(x) return x:to("f32"):requires_grad() end,
  function(x) return x:detach():to("f32"):requires_grad():mul(2) end,
  function(x) x:free() return x end,
}
local VARIANT_NAMES = { ":t()", ":transpose(1,-1)", ":narrow(1,2,n-1)", ":select(1,1)",
  ":unsqueeze(1):expand(3,...)", ":unsqueeze(-1):expand_as(..,2)", ":permute(reversed)", ":narrow(-1,1,1):transpose(1,-1)", ":reshape(-1)",
  ":contiguous()", ":to('f32'):requires_grad()", ":to('f32'):requires_grad():mul(2)", ":free()" }

local function tensor()
  if #pool > 0 and chance(0.6) then
    local x = pick(pool)
    if chance(0.3) then
      local k = below(#VARIANTS) + 1
      local ok, y = pcall(VARIANTS[k], x)
      if ok and glia.is_tensor(y) then
        desc[y] = "(" .. show(x) .. ")" .. VARIANT_NAMES[k]
        return y
      end
    end
    return x
  end
  return fresh_tensor() or glia.zeros(2)
end

local ncall = 0
local function keep(x)
  if not glia.is_tensor(x) then return end
  local ok, n = pcall(function()
    local n = 1
    for _, v in ipairs(x:shape()) do n = n * math.max(v, 1) end -- (0 as 1: see HUGE_EMPTY)
    return n
  end)
  if ok and n > 100000 then return end -- a big result once is enough
  desc[x] = desc[x] or fmt("<result of call %d>", ncall)
  if #pool < POOL then pool[#pool + 1] = x else pool[below(POOL) + 1] = x end
end

local function fn_value()
  return pick {
    function() return tensor() end,
    function(...) return ... end,
    function() error("fuzz: from a callback") end,
  }
end

local value -- forward

local function table_value()
  local k = below(10)
  if k == 0 then return shape_table()
  elseif k == 1 then return {}
  elseif k == 2 then return { pick(NUMBERS), pick(NUMBERS) }
  elseif k == 3 then
    local list = { tensor(), tensor() }
    if chance(0.1) then for i = 3, pick { 100, 1100 } do list[i] = list[i % 2 + 1] end end
    return list
  elseif k == 4 then return { { 1, 2 }, { 3 } }
  elseif k == 5 then return { dim = pick(SMALL), keepdim = chance(0.5) }
  elseif k == 6 then return { 1, 2, 3, 4, 5, 6, 7, 8, 9 }
  elseif k == 7 then return { value(), value(), value() }
  elseif k == 8 then return { pick(SMALL), pick(SMALL) }
  end
  return { { { pick(NUMBERS) } } }
end

function value()
  local k = below(20)
  if k < 8 then return tensor()
  elseif k < 11 then return pick(SMALL)
  elseif k < 14 then return pick(NUMBERS)
  elseif k < 16 then return pick(STRINGS)
  elseif k < 18 then return table_value()
  elseif k == 18 then return pick { true, false }
  end
  return chance(0.5) and fn_value() or nil
end

-- Arguments for a call: usually a tensor first.
-- A value that nearly fits a call on x: a tensor of x's shape (or one
-- that broadcasts), indices in range, a dim of x, x's shape, a mask.
local function near(x)
  local ok, shape = pcall(x.shape, x)
  local n = 1
  for _, v in ipairs(ok and shape or {}) do n = n * math.max(v, 1) end
  if not ok or n > 100000 then return value() end -- kinds 9 and 10 would fill the 1s
  local k = below(12)
  local r
  ok, r = pcall(function()
    if k == 0 then return glia.randn(shape)
    elseif k == 1 then return glia.randn(shape):to(pick(DTYPES))
    elseif k == 2 then return x
    elseif k == 3 then return glia.randn(shape):transpose(1, -1)
    elseif k == 4 then
      local hi = math.max(1, shape[#shape] or 1)
      return glia.randint(pick { 1, hi, hi + 1 }, shape):to(pick { "i64", "i64", "i32", "f32" })
    elseif k == 5 then return glia.rand(shape):gt(0.5)
    elseif k == 6 then return shape
    elseif k == 7 then return pick { 1, -1, 2, #shape, #shape + 1, -#shape - 1 }
    elseif k == 8 then return shape[below(#shape + 1) + 1] or 1
    elseif k == 9 then
      local s = {}
      for i = 1, #shape do s[i] = chance(0.5) and 1 or shape[i] end
      return glia.randn(s)
    elseif k == 10 then return glia.randn(shape[#shape] or 1, pick { 1, 2, 3 })
    end
    return value()
  end)
  if not ok then return value() end
  if glia.is_tensor(r) then desc[r] = desc[r] or fmt("<near %s, kind %d>", show(x), k) end
  return r
end

local function args(x)
  local a, n = {}, below(5)
  if x and chance(0.7) then n = below(4) end
  for i = 1, n do a[i] = (x and chance(0.6)) and near(x) or value() end
  return a, n
end

-- ================================================================ calls

local VERBOSE = os.getenv("FUZZ_VERBOSE") == "1"

-- A call that loops in Lua (the stdlib walking a huge tensor row by row)
-- is stopped after LUA_STEPS instructions by an error from a count hook,
-- and reported as "stopped" (not a failure: look at them by hand).
local LUA_STEPS, TOO_LONG = 1e6, "fuzz: too many Lua steps"
local function too_long() error(TOO_LONG, 0) end
local function call(label, f, a, n)
  if ncall >= CALLS then return { n = 2, false, "fuzz: no calls left" } end
  ncall = ncall + 1
  local parts = {}
  for i = 1, n do parts[i] = show(a[i]) end
  io.write(fmt("%d %s(%s)\n", ncall, label, concat(parts, ", ")))
  debug.sethook(too_long, "", LUA_STEPS)
  local res = pack(pcall(f, unpack(a, 1, n)))
  debug.sethook()
  if not res[1] and res[2] == TOO_LONG then io.write("  stopped: too many Lua steps\n") end
  if VERBOSE then io.write("  -> ", tostring(res[1]), " ", type(res[2]) == "string" and res[2]:sub(1, 120) or show(res[2]), "\n") end
  return res
end

-- Backward passes on whatever came back, and the grads they left.
local function after(res)
  for i = 2, res.n do
    local r = res[i]
    local ok, big = pcall(function() return r:numel() > 100000 end)
    if glia.is_tensor(r) and not (ok and big) then -- (an expand may have 2^32 elements)
      keep(r)
      if chance(0.3) then
        call("backward_of_result", function()
          local ok, need = pcall(r.needs_grad, r)
          if ok and need then
            if r:numel() == 1 then r:backward() else r:sum():backward() end
          else
            r:backward()
          end
          local g
          for _, x in ipairs(pool) do
            local okg, gx = pcall(function() return x.grad end)
            if okg and gx then g = gx end
          end
          if g then keep(g) end
        end, {}, 0)
      end
    end
  end
end

local function names_of(t)
  local list = {}
  for k, v in pairs(t) do if type(v) == "function" then list[#list + 1] = k end end
  sort(list)
  return list
end

-- glia functions called with random arguments; the ones that touch files
-- or process state get arguments of their own below.
local SPECIAL = { save = true, load = true, read_idx = true, set_num_threads = true,
  fail_alloc_after = true, set_grad_enabled = true }
local FUNCS = {}
for _, k in ipairs(names_of(glia)) do
  if not SPECIAL[k] and k ~= "_methods" then FUNCS[#FUNCS + 1] = k end
end
local METHODS = names_of(glia._methods)
local nthreads = glia.num_threads()

local function glia_call()
  local name = pick(FUNCS)
  local a, n
  if chance(0.6) then
    local x = tensor()
    local rest
    rest, n = args(x)
    a = { x, unpack(rest, 1, n) }
    n = n + 1
  else
    a, n = args()
  end
  after(call("glia." .. name, glia[name], a, n))
end

local function method_call()
  local name = pick(METHODS)
  local x = tensor()
  local a, n = args(x)
  local f = function(...) return x[name](x, ...) end
  desc[f] = name
  local res = call(fmt("(%s):%s", show(x), name), f, a, n)
  after(res)
end

local OPERATORS = {
  { "+", function(a, b) return a + b end }, { "-", function(a, b) return a - b end },
  { "*", function(a, b) return a * b end }, { "/", function(a, b) return a / b end },
  { "^", function(a, b) return a ^ b end }, { "unm", function(a) return -a end },
  { "#", function(a) return #a end }, { "tostring", function(a) return tostring(a) end },
  { "index", function(a, b) return a[b] end },
  { "newindex", function(a, b, c) a[b] = c end },
  { "grad", function(a) return a.grad end },
  { "close", function(a) local mt = getmetatable(a); return mt.__close and mt.__close(a) end },
}

local function operator_call()
  local op = pick(OPERATORS)
  local a = { tensor(), value(), value() }
  if chance(0.3) then a[1], a[2] = a[2], a[1] end
  if op[1] == "index" or op[1] == "newindex" then
    if chance(0.5) then a[2] = pick { 1, -1, 0, 2, 3, 2 ^ 53, NAN, { 1, 2 }, { 1, -1 }, { 0 }, {} } end
    if chance(0.4) then a[3] = pick(NUMBERS) end
  end
  after(call(op[1], op[2], a, 3))
end

-- `.grad` assignment and the backward pass that reads it.
local function grad_call()
  local x, g = tensor(), nil
  local ok = pcall(function()
    g = glia.zeros(x:shape()):to(x:dtype())
    desc[g] = fmt("glia.zeros(%s):to(%q)", show(x:shape()), x:dtype())
  end)
  if not ok or BAD_GRAD and chance(0.5) then
    local k = below(3)
    if k == 0 then g = value() elseif k == 1 then g = x else pcall(function() g = x * 2 end) end
  end
  after(call("grad_assign_backward", function(x, g)
    x:requires_grad()
    x.grad = g
    local y = x * 2
    y:sum():backward()
    return x.grad
  end, { x, g }, 2))
end

-- Valid calls of the ops whose arguments random values rarely get right,
-- one argument then made wrong (another value, a view of it, freed) half
-- the time: the checks after the first ones, and the kernels, get reached.
local function r(...) return glia.randn(...) end
local function ids(hi, ...) return glia.randint(1, hi + 1, { ... }) end
local TEMPLATES = {
  attention = function(B, H, T, D) return { r(B, H, T, D), r(B, H, T, D), r(B, H, T, D), chance(0.5) } end,
  attention_lse = function(B, H, T, D) return { r(B, H, T, D), r(B, 1, T, D), r(B, 1, T, D), true } end,
  attention_decode = function(B, H, T, D)
    return { r(B, H, 1, D), r(B, H, T + 1, D), r(B, H, T + 1, D), T }
  end,
  linear = function(N, I, O) return { r(N, I), r(O, I), r(O) } end,
  addmm = function(N, I, O) return { r(N, O), r(N, I), r(I, O), 0.5, 2 } end,
  matmul = function(N, I, O) return { r(N, I), r(I, O) } end,
  cross_entropy = function(N, C) return { r(N, C), ids(C, N) } end,
  embedding = function(V, D, N) return { r(V, D), ids(V, N) } end,
  gather = function(N, C) return { r(N, C), 2, ids(C, N, 1) } end,
  index_select = function(N, C) return { r(N, C), 1, ids(N, C) } end,
  scatter_add = function(N, C) return { r(N, C), 2, ids(C, N, 2), r(N, 2) } end,
  scatter_add_ = function(N, C) return { r(N, C), 2, ids(C, N, 2), r(N, 2) } end,
  one_hot = function(N, C) return { ids(C, N), C } end,
  masked_fill = function(N, C) return { r(N, C), glia.rand(N, C):gt(0.5), 7 } end,
  masked_fill_ = function(N, C) return { r(N, C), glia.rand(1, C):gt(0.5), 0 / 0 } end,
  layer_norm = function(N, C) return { r(N, C), r(C), r(C), 1e-5 } end,
  rms_norm = function(N, C) return { r(N, C), r(C), 1e-6 } end,
  cat = function(N, C) return { { r(N, C), r(N, 1) }, 2 } end,
  stack = function(N, C) return { { r(N, C), r(N, C) }, 1 } end,
  narrow = function(N, C) return { r(N, C), 2, 1, C } end,
  select = function(N, C) return { r(N, C), 1, N } end,
  transpose = function(N, C) return { r(N, C, 2), 1, 3 } end,
  topk = function(N, C) return { r(N, C), C, 2, true } end,
  full = function(N, C) return { { N, C }, 3, "i32" } end,
  linspace = function(N) return { 0, 1, N } end,
  randint = function(N, C) return { -3, 5, { N, C } } end,
  sgd_step_ = function(N) return { r(N), r(N), r(N), 1, 0.1, 0.9, 0, false, 0 } end,
  adam_step_ = function(N) return { r(N), r(N), r(N), r(N), 1, 1e-3, 0.9, 0.999, 1e-8, 0, true } end,
  lamb_step_ = function(N) return { r(N), r(N), r(N), r(N), 1, 1e-3, 0.9, 0.999, 1e-6, 0 } end,
  conv2d = function(N, C, O, K)
    return { r(N, C, 5, 6), r(O, C, K, K), r(O), { stride = pick { 1, 2 }, padding = pick { 0, 1 } } }
  end,
  conv1d = function(N, C, O, K)
    return { r(N, C, 7), r(C, 1, K), r(C), { stride = 1, padding = 1, dilation = 2, groups = C } }
  end,
  max_pool2d = function(N, C, K) return { r(N, C, 6, 5), K, 2, 1 } end,
  avg_pool2d = function(N, C, K) return { r(N, C, 6, 5), K, 1, 0 } end,
  adaptive_avg_pool2d = function(N, C, K) return { r(N, C, 6, 5), K } end,
  moe_route = function(T, E, K)
    return { r(T, E), { k = K, router = pick { "softmax", "sigmoid" }, capacity_factor = pick { 0.5, 1, 2 } } }
  end,
  moe_experts = function(T, E, D, F)
    return { r(T, D), r(T, 2), ids(E, T, 2), r(E, F, D), r(E, F), r(E, D, F), r(E, D), "gelu" }
  end,
  moe = function(T, E, D, F)
    return { r(T, D), r(E, D), r(E, F, D), r(E, F), r(E, D, F), r(E, D), { k = 1, aux_alpha = 0.01 } }
  end,
  moe_dispatch = function(T, E) return { ids(E, T, 2), E } end,
  decoder_block = function(B, T, D)
    local w = {}
    for i = 1, 12 do w[i] = r(D, D) end
    return { r(B, T, D), w, r(T, 2), r(T, 2), 1, 1 }
  end,
}
local TEMPLATE_NAMES = {}
for _, k in ipairs(names_of(TEMPLATES)) do
  if glia[k] then TEMPLATE_NAMES[#TEMPLATE_NAMES + 1] = k end
end

local function template_call()
  local name = pick(TEMPLATE_NAMES)
  local sizes = {}
  for i = 1, 4 do sizes[i] = pick { 1, 2, 3, 4, 0, 8 } end
  local ok, a = pcall(TEMPLATES[name], unpack(sizes))
  if not ok then return end
  local n = #a
  for i = 1, n do if glia.is_tensor(a[i]) then desc[a[i]] = fmt("glia.randn(%s)", show(a[i]:shape())) end end
  if chance(0.5) then
    local i = below(n) + 1
    local k = below(4)
    if k == 0 then a[i] = value()
    elseif glia.is_tensor(a[i]) then
      local x = a[i]
      local v = below(#VARIANTS) + 1
      local okv, y = pcall(VARIANTS[v], x)
      if okv and glia.is_tensor(y) then
        a[i] = y
        desc[y] = "(" .. show(x) .. ")" .. VARIANT_NAMES[v]
      elseif k == 1 then
        a[i] = near(x)
      end
    else
      a[i] = pick(NUMBERS)
    end
  end
  if chance(0.3) then
    for i = 1, n do
      if glia.is_tensor(a[i]) then pcall(a[i].requires_grad, a[i]) end
    end
  end
  after(call("glia." .. name, glia[name], a, n))
end

local function special_call()
  local k = below(4)
  if k == 0 then
    local a = { pick { 1, 2, 0, -1, NAN, 2 ^ 53, 1e12, huge, "x", nil, 3 } }
    call("glia.set_num_threads", glia.set_num_threads, a, 1)
    glia.set_num_threads(nthreads)
  elseif k == 1 then
    local a = { pick { true, false, nil, 0, "x" } }
    call("glia.set_grad_enabled", glia.set_grad_enabled, a, 1)
    glia.set_grad_enabled(true)
  elseif k == 2 then
    -- an allocation fails in the middle of a random call
    local nth = below(12) + 1
    local name = pick(FUNCS)
    local a, n = args()
    a[1] = tensor()
    n = math.max(n, 1)
    call(fmt("glia.fail_alloc_after(%d); glia.%s", nth, name), function(...)
      glia.fail_alloc_after(nth)
      local r = pack(pcall(glia[name], ...))
      glia.fail_alloc_after(0)
      return unpack(r, 1, r.n)
    end, a, n)
  else
    local name = pick(METHODS)
    local nth = below(12) + 1
    local x = tensor()
    local a, n = args()
    call(fmt("glia.fail_alloc_after(%d); (%s):%s", nth, show(x), name), function(...)
      glia.fail_alloc_after(nth)
      local r = pack(pcall(x[name], x, ...))
      glia.fail_alloc_after(0)
      return unpack(r, 1, r.n)
    end, a, n)
  end
end

-- ====================================================== stdlib entry points

local nn = require "glia.nn"
local optim = require "glia.optim"
local data = require "glia.data"
local KV = require "glia.kv_cache"
local checkpoint = require "glia.checkpoint"

local MODULES = names_of(nn)
local modules = {} -- built modules, kept for forward/optimizer calls

local function small_or_any()
  return chance(0.7) and pick { 1, 2, 4, 8 } or value()
end

local function nn_call()
  local k = below(3)
  if k == 0 or #modules == 0 then
    local name = pick { "Linear", "Embedding", "LayerNorm", "RMSNorm", "BatchNorm1d", "Dropout",
      "ReLU", "GELU", "SiLU", "Identity", "Sequential", "ModuleList", "ModuleDict", "Residual",
      "MultiHeadAttention", "CausalSelfAttention", "TransformerBlock", "Parameter" }
    local a = { small_or_any(), small_or_any(), chance(0.5) and table_value() or value() }
    if name == "Sequential" or name == "ModuleList" or name == "Residual" then
      a = { modules[1] or value(), modules[2] or value() }
    end
    local res = call("nn." .. name, nn[name], a, 3)
    if res[1] and nn.is_module(res[2]) then
      if #modules < 8 then modules[#modules + 1] = res[2] else modules[below(8) + 1] = res[2] end
    end
  elseif k == 1 then
    local m = pick(modules)
    local a = { tensor(), value() }
    if chance(0.5) then a[1] = glia.randn(pick { 1, 2 }, pick { 1, 2, 4, 8 }) end
    after(call(fmt("nn.%s:forward", getmetatable(m).__name or "?"), function(...)
      return m:forward(...)
    end, a, 2))
  else
    local m = pick(modules)
    local what = pick { "parameters", "state_dict", "load_state_dict", "zero_grad", "train",
      "eval", "tostring" }
    local a = { value() }
    call("nn module:" .. what, function(...)
      if what == "tostring" then return tostring(m) end
      return m[what](m, ...)
    end, a, 1)
  end
  -- the stateless functions too
  if chance(0.3) then
    local name = pick(names_of(nn.F))
    local a, n = args()
    after(call("nn.F." .. name, nn.F[name], a, n))
  end
end

local function optim_call()
  local name = pick { "SGD", "Adam", "AdamW", "LAMB" }
  local params = {}
  for i = 1, below(3) + 1 do params[i] = tensor() end
  if #modules > 0 and chance(0.3) then params = pick(modules):parameters() end
  local opts = chance(0.5) and { lr = pick(NUMBERS), momentum = chance(0.5) and pick(NUMBERS) or nil,
    weight_decay = chance(0.5) and pick(NUMBERS) or nil } or table_value()
  call("optim." .. name .. ":step", function(params, opts)
    local opt = optim[name](params, opts)
    for _, p in ipairs(params) do
      pcall(function() p:requires_grad() p:mul(p):sum():backward() end)
    end
    opt:step()
    optim.clip_grad_norm(params, pick { 1, 0, NAN, huge, -1 })
    opt:step()
    return opt:state_dict()
  end, { params, opts }, 2)
end

local function data_call()
  local k = below(4)
  if k == 0 then
    call("data.TensorDataset+DataLoader", function(a, b, opts)
      local ds = data.TensorDataset(a, b)
      local dl = data.DataLoader(ds, opts)
      local n = 0
      for xb, yb in dl:iter() do n = n + 1 if n > 4 then break end keep(xb) keep(yb) end
      return n
    end, { tensor(), tensor(), chance(0.5) and { batch_size = pick(NUMBERS), shuffle = chance(0.5) }
      or value() }, 3)
  elseif k == 1 then
    call("data.CharDataset", function(text, vocab, n)
      local ds = data.CharDataset(text, vocab)
      local x, y = ds:get(glia.tensor({ 1 }):to("i64"))
      keep(x) keep(y)
      return ds:len(), ds:encode(text), n
    end, { pick(STRINGS), value(), value() }, 3)
  elseif k == 2 then
    call("data.Generator", function(seed, s)
      local g = data.Generator(seed, s)
      return g
    end, { pick(NUMBERS), value() }, 2)
  else
    call("kv_cache", function(B, H, d, cap, k, v, q)
      local c = KV.new(B, H, d, cap)
      c:append(k, v)
      keep(c:attend(q))
      c:reserve(pick(SMALL))
      c:advance(pick(SMALL))
      return c:len()
    end, { small_or_any(), small_or_any(), small_or_any(), small_or_any(), tensor(), tensor(),
      tensor() }, 7)
  end
end

local function file_call()
  if not DIR then return end
  local path = DIR .. "/" .. pick { "a.safetensors", "b.safetensors", "c.idx", "nodir/x" }
  local k = below(5)
  if k == 0 then
    local tensors = { w = tensor(), [pick(STRINGS)] = tensor() }
    if chance(0.3) then tensors = table_value() end
    call("glia.save", glia.save, { path, tensors, chance(0.5) and { meta = pick(STRINGS) } or value() }, 3)
  elseif k == 1 then
    after(call("glia.load", glia.load, { path, value() }, 2))
  elseif k == 2 then
    -- a file of random bytes, or a truncated real one, loaded
    call("glia.load(corrupt)", function(p)
      local f = assert(io.open(p, "rb"))
      local s = f:read("*a")
      f:close()
      local cut = below(#s + 1)
      local bytes = { s:byte(1, cut) }
      for _ = 1, below(4) do
        if #bytes > 0 then bytes[below(#bytes) + 1] = below(256) end
      end
      local out = assert(io.open(p .. ".bad", "wb"))
      for i = 1, #bytes, 4096 do out:write(string.char(unpack(bytes, i, math.min(i + 4095, #bytes)))) end
      out:close()
      local ok, r = pcall(glia.load, p .. ".bad")
      pcall(glia.read_idx, p .. ".bad")
      return ok, r
    end, { DIR .. "/a.safetensors" }, 1)
  elseif k == 3 then
    call("glia.read_idx", glia.read_idx, { path }, 1)
  else
    call("checkpoint.save+load", function(m)
      checkpoint.save(DIR .. "/ck", { model = m, step = pick(NUMBERS), extra = table_value() })
      return checkpoint.load(DIR .. "/ck", { model = m })
    end, { modules[1] or value() }, 1)
  end
end

-- ================================================================ main

local KINDS = {
  { 30, glia_call }, { 30, method_call }, { 15, template_call }, { 10, operator_call }, { 5, grad_call },
  { 3, special_call }, { 8, nn_call }, { 3, optim_call }, { 4, data_call }, { 1, file_call },
}
local total = 0
for _, k in ipairs(KINDS) do total = total + k[1] end

io.write(fmt("fuzz: seed %d, %d calls, %s\n", SEED, CALLS, glia.version))
local EXIT_AT = tonumber(os.getenv("FUZZ_EXIT_AT") or "") -- t/fuzz.t's test of itself
while ncall < CALLS do
  if EXIT_AT and ncall >= EXIT_AT then os.exit(0) end
  local r = below(total)
  for _, k in ipairs(KINDS) do
    if r < k[1] then k[2]() break end
    r = r - k[1]
  end
  -- Lua does not see the bytes a tensor holds: collect before big garbage piles up
  if glia.memory().live > 64 * 2 ^ 20 or ncall % 100 == 0 then
    collectgarbage()
    glia.trim()
  end
end
pool, modules = nil, nil
collectgarbage()
collectgarbage()
io.write(fmt("fuzz: done, seed %d, %d calls\n", SEED, ncall))
