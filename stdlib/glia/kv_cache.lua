-- glia.kv_cache -- a per-layer key/value cache for autoregressive decoding.
--
--   local KV = require "glia.kv_cache"
--   local cache = KV.new(B, Hkv, d, capacity [, dv])
--   cache:append(k_new, v_new)   -- {B,Hkv,n,d}, {B,Hkv,n,dv}: positions len+1..len+n
--   local o = cache:attend(q)    -- q {B,H,n,d}: the last n positions, causal
--   cache:len(), cache:capacity(), cache:reset()
--   cache:reserve(n); write cache.k, cache.v at len+1..len+n; cache:advance(n)
--                                -- for fused ops that fill the buffers themselves
--
-- The cache owns two preallocated buffers {B,Hkv,capacity,d|dv}. Appending
-- past the capacity reallocates once with doubled capacity (copying the
-- cached positions); attend reads the first len positions in place through
-- glia.attention_decode, never copying the cache. Inference only: appends
-- run without autograd.
local glia = require "glia"

local error, format, max, floor = error, string.format, math.max, math.floor

local Cache = {}
Cache.__index = Cache

local function check_count(x, what)
  if type(x) ~= "number" or x < 0 or x ~= floor(x) or x == math.huge then
    error(format("glia.kv_cache: %s must be a non-negative integer, got %s", what, tostring(x)), 3)
  end
end

function Cache.new(B, Hkv, d, capacity, dv)
  dv = dv or d
  check_count(B, "batch")
  check_count(Hkv, "kv heads")
  check_count(d, "head dim")
  check_count(dv, "value dim")
  check_count(capacity, "capacity")
  local self = setmetatable({ B = B, Hkv = Hkv, d = d, dv = dv, n = 0 }, Cache)
  self:_alloc(max(capacity, 1))
  return self
end

-- New buffers of capacity cap holding the first n cached positions.
function Cache:_alloc(cap)
  local k = glia.zeros(self.B, self.Hkv, cap, self.d)
  local v = glia.zeros(self.B, self.Hkv, cap, self.dv)
  if self.n > 0 then
    glia.no_grad(function()
      k:narrow(3, 1, self.n):copy_(self.k:narrow(3, 1, self.n))
      v:narrow(3, 1, self.n):copy_(self.v:narrow(3, 1, self.n))
    end)
  end
  self.k, self.v, self.cap = k, v, cap
end

local function shape_str(x)
  return "{" .. table.concat(x:shape(), ",") .. "}"
end

-- Room for n more positions (reallocating as append does); returns self.
function Cache:reserve(n)
  check_count(n, "reserve count")
  if self.n + n > self.cap then self:_alloc(max(2 * self.cap, self.n + n)) end
  return self
end

-- Counts n more positions as cached, once the caller has written them.
function Cache:advance(n)
  check_count(n, "advance count")
  if self.n + n > self.cap then
    error(format("glia.kv_cache: advance by %d past the capacity %d (length %d)", n, self.cap,
                 self.n), 2)
  end
  self.n = self.n + n
  return self
end

function Cache:append(k, v)
  local n = k:dim() == 4 and k:size(3) or -1
  if n < 0 or k:size(1) ~= self.B or k:size(2) ~= self.Hkv or k:size(4) ~= self.d
     or v:dim() ~= 4 or v:size(1) ~= self.B or v:size(2) ~= self.Hkv or v:size(3) ~= n
     or v:size(4) ~= self.dv then
    error(format("glia.kv_cache: append expects k {%d,%d,n,%d} and v {%d,%d,n,%d}, got %s and %s",
                 self.B, self.Hkv, self.d, self.B, self.Hkv, self.dv, shape_str(k), shape_str(v)), 2)
  end
  if n == 0 then return self end
  self:reserve(n)
  glia.no_grad(function()
    self.k:narrow(3, self.n + 1, n):copy_(k)
    self.v:narrow(3, self.n + 1, n):copy_(v)
  end)
  self.n = self.n + n
  return self
end

-- Attention of q {B,H,n,d} (the last n cached positions) over the cache.
function Cache:attend(q, scale)
  return glia.attention_decode(q, self.k, self.v, self.n, scale)
end

function Cache:len() return self.n end
function Cache:capacity() return self.cap end
function Cache:reset()
  self.n = 0
  return self
end

return Cache
