-- glia.kv_cache -- a per-layer key/value cache for autoregressive decoding.
--
--   local KV = require "glia.kv_cache"
--   local cache = KV.new(B, Hkv, d, capacity [, dv])
--   cache:append(k_new, v_new)   -- {B,Hkv,n,d}, {B,Hkv,n,dv}: positions len+1..len+n
--   local o = cache:attend(q)    -- q {B,H,n,d}: the last n positions, causal
--   cache:len(), cache:capacity(), cache:reset()
--   cache:reserve(n); write cache.k, cache.v at len+1..len+n; cache:advance(n)
--                                -- for fused ops that fill the buffers themselves
--   cache:set_lengths(lens)      -- ragged batch: sequence b holds lens[b] positions
--
-- Ragged batches (sequences whose prompts differ in length, right-padded
-- to a common length for the prefill): after set_lengths each sequence
-- has its own length, append takes one position per sequence and writes
-- it at that sequence's end (over the padding's keys and values, which
-- are never read), and attend reads each sequence's own positions.
--
-- The cache owns two preallocated buffers {B,Hkv,capacity,d|dv}. Appending
-- past the capacity reallocates once with doubled capacity (copying the
-- cached positions); attend reads the first len positions in place through
-- glia.attention_decode, never copying the cache. Inference only: appends
-- run without autograd.
local glia = require "glia"

local format, max, floor = string.format, math.max, math.floor
local error = glia.error -- blames the user's line, never the stdlib's

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

-- lens: a Lua list of B lengths, each at most the cached length.
function Cache:set_lengths(lens)
  if type(lens) ~= "table" or #lens ~= self.B then
    error(format("glia.kv_cache: set_lengths expects a list of %d lengths", self.B), 2)
  end
  local copy = {}
  for b = 1, self.B do
    check_count(lens[b], "length")
    if lens[b] > self.n then
      error(format("glia.kv_cache: length %d of sequence %d exceeds the %d positions cached",
                   lens[b], b, self.n), 2)
    end
    copy[b] = lens[b]
  end
  self.lens, self.lens_t = copy, glia.tensor(copy, "i64")
  return self
end

-- One new position per sequence of a ragged batch, at each one's end.
local function append_ragged(self, k, v)
  local lens, top = self.lens, 0
  for b = 1, self.B do top = max(top, lens[b] + 1) end
  self:reserve(top - self.n > 0 and top - self.n or 0)
  glia.no_grad(function()
    for b = 1, self.B do
      self.k:narrow(1, b, 1):narrow(3, lens[b] + 1, 1):copy_(k:narrow(1, b, 1))
      self.v:narrow(1, b, 1):narrow(3, lens[b] + 1, 1):copy_(v:narrow(1, b, 1))
      lens[b] = lens[b] + 1
    end
  end)
  self.n, self.lens_t = max(self.n, top), glia.tensor(lens, "i64")
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
  if self.lens then
    if n ~= 1 then
      error(format("glia.kv_cache: a ragged cache appends one position at a time, got %d", n), 2)
    end
    return append_ragged(self, k, v)
  end
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
  return glia.attention_decode(q, self.k, self.v, self.lens_t or self.n, scale)
end

function Cache:len() return self.n end
function Cache:capacity() return self.cap end
function Cache:reset()
  self.n, self.lens, self.lens_t = 0, nil, nil
  return self
end

return Cache
