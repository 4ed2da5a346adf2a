-- glia.data -- datasets and loaders.
--
--   data.read_idx(path)                  IDX file (gzipped or plain) -> tensor | nil, message
--   data.fashion_mnist(split [, opts])   images f32 {N,784} in [0,1], labels i64 1..10
--   data.TensorDataset(x, y, ...)        rows of tensors that share their first size
--   data.DataLoader(ds, opts)            batches, seeded shuffle: for xb, yb in loader:iter()
--   data.Generator(seed [, stream])      a small seeded generator independent of glia's RNG
--   data.CharDataset(text [, vocab])     byte-level text: encode/decode, split, random windows
--   data.kjv_text()                      the King James Bible as printed by Debian's bible-kjv
--
-- Ids and indices are 1-based, like everything Lua-facing in glia. A dataset
-- is any object with ds:len() and ds:get(idx), idx an i64 tensor of 1-based
-- rows, returning one tensor per field; DataLoader works with any of them.
-- `#` works on loaders and datasets under Lua 5.4 only (LuaJIT ignores __len
-- on tables): portable code calls :len().
local glia = require "glia"
local options = require "glia.options"

local floor, ceil, min = math.floor, math.ceil, math.min
local concat = table.concat
local unpack = table.unpack or unpack
local type, setmetatable, ipairs, select, tostring = type, setmetatable, ipairs, select, tostring
local error = glia.error -- blames the user's line, never the stdlib's
local fmt = string.format
local io_open, io_popen = io.open, io.popen

local data = {}

data.read_idx = glia.read_idx

local function check_count(v, what, fname)
  if type(v) ~= "number" or v < 1 or v ~= floor(v) then
    error(fmt("%s: %s must be a positive integer, got %s", fname, what, tostring(v)), 3)
  end
end

-- ======================================================= Fashion-MNIST

local FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
local FMNIST_FILES = { train = "train", test = "t10k" }

local function file_exists(path)
  local f = io_open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Reads one IDX file, raising with the package to install when it is missing.
local function read_fmnist(path)
  if not file_exists(path) then
    error(fmt("data.fashion_mnist: %s not found: install the Debian package dataset-fashion-mnist",
              path), 3)
  end
  local t, msg = glia.read_idx(path)
  if not t then error("data.fashion_mnist: " .. msg, 3) end
  return t
end

-- split: "train" (60000 images) or "test" (10000). opts.dir replaces the
-- Debian package's directory. Returns images f32 {N, 784} scaled to [0, 1]
-- and labels i64 {N} in 1..10 (the file's class + 1).
function data.fashion_mnist(split, opts)
  local prefix = FMNIST_FILES[split]
  if not prefix then
    error(fmt('data.fashion_mnist: split must be "train" or "test", got %s', tostring(split)), 2)
  end
  local dir = options.check("data.fashion_mnist", opts, { "dir" }).dir or FMNIST_DIR
  local images = read_fmnist(dir .. "/" .. prefix .. "-images-idx3-ubyte.gz")
  local labels = read_fmnist(dir .. "/" .. prefix .. "-labels-idx1-ubyte.gz")
  if images:dim() ~= 3 or labels:dim() ~= 1 or images:size(1) ~= labels:size(1) then
    error(fmt("data.fashion_mnist: %s: images {%s} do not match labels {%s}", dir,
              concat(images:shape(), ","), concat(labels:shape(), ",")), 2)
  end
  local n = images:size(1)
  local x = images:view(n, images:size(2) * images:size(3)):to("f32"):div_(255)
  local y = labels:to("f32"):add_(1):to("i64")
  images:free() -- the u8 copy is dead weight once converted
  labels:free()
  return x, y
end

-- ======================================================= Generator

-- Park-Miller "minimal standard" generator: x <- 48271 x mod (2^31 - 1).
-- Every product stays below 2^47, so Lua 5.4 integers and LuaJIT doubles
-- give the same sequence: shuffles are identical across interpreters.
local MOD = 2147483647
local MULT = 48271

local Generator = {}
Generator.__index = Generator

local function check_seed(seed, fname)
  if type(seed) ~= "number" or seed ~= floor(seed) then
    error(fmt("%s: seed must be an integer, got %s", fname, tostring(seed)), 3)
  end
end

-- A generator for seed (any integer); stream (an integer, e.g. the epoch)
-- picks one of many sequences for the same seed. A few steps after each
-- mixing decorrelate nearby seeds and streams.
function data.Generator(seed, stream)
  seed, stream = seed or 0, stream or 0
  check_seed(seed, "data.Generator")
  check_seed(stream, "data.Generator")
  local self = setmetatable({ x = floor(seed % (MOD - 1)) + 1 }, Generator)
  for _ = 1, 4 do self:next() end
  self.x = floor((self.x + stream) % (MOD - 1)) + 1
  for _ = 1, 4 do self:next() end
  return self
end

function Generator:next()
  self.x = self.x * MULT % MOD
  return self.x
end

-- A uniform integer in [1, n] (n much smaller than 2^31).
function Generator:random(n)
  return self:next() % n + 1
end

-- A uniformly shuffled list of 1..n (Fisher-Yates).
function Generator:permutation(n)
  local p = {}
  for i = 1, n do p[i] = i end
  for i = n, 2, -1 do
    local j = self:random(i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end

-- The state is one integer: save it with a checkpoint, restore it to resume.
function Generator:state() return self.x end

function Generator:set_state(x)
  if type(x) ~= "number" or x < 1 or x >= MOD or x ~= floor(x) then
    error("Generator:set_state: not a state returned by Generator:state(): " .. tostring(x), 2)
  end
  self.x = x
end

-- ======================================================= TensorDataset

local TensorDataset = {}
TensorDataset.__index = TensorDataset

-- Rows of one or more tensors that share their first size (inputs, labels...).
function data.TensorDataset(...)
  local tensors, n = { ... }, nil
  if select("#", ...) == 0 then error("data.TensorDataset: expected at least one tensor", 2) end
  for i = 1, select("#", ...) do
    local t = tensors[i]
    if not glia.is_tensor(t) or t:dim() == 0 then
      error(fmt("data.TensorDataset: argument %d must be a tensor with at least one dim", i), 2)
    end
    n = n or t:size(1)
    if t:size(1) ~= n then
      error(fmt("data.TensorDataset: argument %d has %d rows, argument 1 has %d", i, t:size(1), n),
            2)
    end
  end
  return setmetatable({ tensors = tensors, n = n }, TensorDataset)
end

function TensorDataset:len() return self.n end
TensorDataset.__len = TensorDataset.len

-- The rows idx (i64 tensor, 1-based) of every tensor, one return value each.
function TensorDataset:get(idx)
  local out = {}
  for i, t in ipairs(self.tensors) do out[i] = t:index_select(1, idx) end
  return unpack(out, 1, #self.tensors)
end

-- ======================================================= DataLoader

local DataLoader = {}
DataLoader.__index = DataLoader

-- opts: batch_size (1), shuffle (false), seed (0), drop_last (false).
-- Shuffling uses its own generator, seeded from (seed, epoch): the order of
-- every epoch is fixed by the seed, whatever else draws random numbers.
--
-- Data-parallel (glia.distributed): with world_size = N and rank = r (0-based,
-- as dist.rank() gives), batch_size is the global batch and each batch of
-- the epoch is split in N equal parts, r's part for this rank: every rank
-- walks the same order (same seed), so the N parts together are the batch a
-- single process would take, at every N, epoch after epoch and on resume.
-- N must divide batch_size, and the data must split into whole batches or
-- drop_last be set.
function data.DataLoader(dataset, opts)
  opts = options.check("data.DataLoader", opts, { "batch_size", "shuffle", "seed", "drop_last",
                                                  "rank", "world_size" })
  if type(dataset) ~= "table" or type(dataset.len) ~= "function"
      or type(dataset.get) ~= "function" then
    error("data.DataLoader: dataset must have :len() and :get(idx)", 2)
  end
  local self = setmetatable({
    dataset = dataset,
    batch_size = opts.batch_size or 1,
    shuffle = opts.shuffle or false,
    seed = opts.seed or 0,
    drop_last = opts.drop_last or false,
    epoch = 1, -- the epoch the next iter() runs
  }, DataLoader)
  check_count(self.batch_size, "batch_size", "data.DataLoader")
  check_seed(self.seed, "data.DataLoader")
  local N, r = opts.world_size or 1, opts.rank or 0
  check_count(N, "world_size", "data.DataLoader")
  if type(r) ~= "number" or r ~= floor(r) or r < 0 or r >= N then
    error(fmt("data.DataLoader: rank must be an integer in 0..%d (world_size %d), got %s", N - 1, N,
              tostring(r)), 2)
  end
  if self.batch_size % N ~= 0 then
    error(fmt("data.DataLoader: world size %d does not divide the batch size %d (the global batch)",
              N, self.batch_size), 2)
  end
  local n = dataset:len()
  if N > 1 and not self.drop_last and n % self.batch_size ~= 0 then
    error(fmt("data.DataLoader: %d rows leave a last batch of %d that does not split over %d "
              .. "ranks like the others: pass drop_last = true", n, n % self.batch_size, N), 2)
  end
  self.rank, self.world_size = r, N
  return self
end

-- The number of batches per epoch.
function DataLoader:len()
  local n = self.dataset:len()
  if self.drop_last then return floor(n / self.batch_size) end
  return ceil(n / self.batch_size)
end
DataLoader.__len = DataLoader.len

-- Makes the next iter() run epoch e (to resume a run mid-way).
function DataLoader:set_epoch(e)
  check_count(e, "epoch", "DataLoader:set_epoch")
  self.epoch = e
end

-- The row order of epoch e: an i64 tensor of 1-based rows.
function DataLoader:order(e)
  local n = self.dataset:len()
  if not self.shuffle then return glia.arange(1, n + 1, 1, "i64") end
  return glia.tensor(data.Generator(self.seed, e):permutation(n), "i64")
end

-- An iterator over the batches of the next epoch: each step returns what
-- dataset:get returns (xb, yb for a TensorDataset).
function DataLoader:iter()
  local order, n, bs = self:order(self.epoch), self.dataset:len(), self.batch_size
  local nb, i, ds = self:len(), 0, self.dataset
  local part = bs / self.world_size -- this rank's rows of each batch
  self.epoch = self.epoch + 1
  return function()
    if i >= nb then return nil end
    local start = i * bs + 1
    i = i + 1
    if self.world_size > 1 then return ds:get(order:narrow(1, start + self.rank * part, part)) end
    return ds:get(order:narrow(1, start, min(bs, n - start + 1)))
  end
end

-- ======================================================= CharDataset

local CharDataset = {}
CharDataset.__index = CharDataset

local function char_dataset(ids, vocab)
  return setmetatable({ data = ids, vocab = vocab, vocab_size = #vocab }, CharDataset)
end

-- A byte-level text dataset. vocab (the distinct bytes, one string) defaults
-- to the sorted bytes of text; token ids are 1-based positions in vocab.
-- Fields: data (i64 {n}), vocab, vocab_size.
function data.CharDataset(text, vocab)
  if type(text) ~= "string" then
    error("data.CharDataset: text must be a string, got " .. type(text), 2)
  end
  if vocab ~= nil and type(vocab) ~= "string" then
    error("data.CharDataset: vocab must be a string of distinct bytes, got " .. type(vocab), 2)
  end
  vocab = vocab or glia.byte_vocab(text)
  return char_dataset(glia.byte_encode(text, vocab), vocab)
end

-- The number of tokens.
function CharDataset:len() return self.data:size(1) end
CharDataset.__len = CharDataset.len

-- A string -> i64 tensor of ids; a byte outside the vocabulary raises.
function CharDataset:encode(s)
  return glia.byte_encode(s, self.vocab)
end

-- A tensor (any shape, read in order) or a table of ids -> string.
function CharDataset:decode(ids)
  if glia.is_tensor(ids) then return glia.byte_decode(ids, self.vocab) end
  local vocab, out = self.vocab, {}
  for i, id in ipairs(ids) do
    if type(id) ~= "number" or id < 1 or id > #vocab or id ~= floor(id) then
      error(fmt("CharDataset:decode: id %s at position %d is outside the vocabulary 1..%d",
                tostring(id), i, #vocab), 2)
    end
    out[i] = vocab:sub(id, id)
  end
  return concat(out)
end

-- The first frac of the tokens and the rest, as two datasets sharing the
-- vocabulary (views of the same data: no copy).
function CharDataset:split(frac)
  local n = self:len()
  local k = floor(n * (frac or 0.9))
  if type(frac) ~= "number" or k < 1 or k >= n then
    error(fmt("CharDataset:split: fraction %s leaves a part empty (%d tokens)", tostring(frac), n), 2)
  end
  return char_dataset(self.data:narrow(1, 1, k), self.vocab),
         char_dataset(self.data:narrow(1, k + 1, n - k), self.vocab)
end

-- x and y (i64 {B, T}) for windows starting at the 1-based positions starts:
-- y is x shifted by one token.
function CharDataset:windows(starts, T)
  local xs, ys, d = {}, {}, self.data
  for b, s in ipairs(starts) do
    xs[b] = d:narrow(1, s, T)
    ys[b] = d:narrow(1, s + 1, T)
  end
  return glia.stack(xs), glia.stack(ys)
end

local function check_window(self, B, T, fname)
  check_count(B, "batch size", fname)
  check_count(T, "context length", fname)
  local n = self:len()
  if n < T + 1 then
    error(fmt("%s: windows of %d+1 tokens do not fit in %d tokens", fname, T, n), 3)
  end
  return n - T -- the number of possible window starts
end

-- B random windows of T tokens: x, y i64 {B, T}. Starts are drawn from rng
-- (a data.Generator) when given, else from glia's RNG (glia.manual_seed and
-- glia.rng_state govern them, so checkpoints that save the RNG state resume
-- the same batches). Data-parallel: with rank r of world_size N (0-based),
-- B is the global batch: every rank draws the same B starts from the same
-- generator state and keeps its B / N of them (rows r*B/N+1 .. (r+1)*B/N).
function CharDataset:batch(B, T, rng, rank, world_size)
  local nstarts = check_window(self, B, T, "CharDataset:batch")
  local N, r = world_size or 1, rank or 0
  if type(N) ~= "number" or N < 1 or N ~= floor(N) or B % N ~= 0 then
    error(fmt("CharDataset:batch: world size %s does not divide the batch size %d (the global "
              .. "batch)", tostring(N), B), 2)
  end
  if type(r) ~= "number" or r < 0 or r >= N or r ~= floor(r) then
    error(fmt("CharDataset:batch: rank must be an integer in 0..%d, got %s", N - 1, tostring(r)), 2)
  end
  local starts
  if rng then
    starts = {}
    for b = 1, B do starts[b] = rng:random(nstarts) end
  else
    starts = glia.randint(1, nstarts + 1, B):totable()
  end
  if N > 1 then
    local part, mine = B / N, {}
    for b = 1, part do mine[b] = starts[r * part + b] end
    starts = mine
  end
  return self:windows(starts, T)
end

-- n batches of B windows of T tokens, evenly spaced over the data and the
-- same on every call: a list of {x, y} pairs, for validation losses.
function CharDataset:fixed_batches(n, B, T)
  check_count(n, "number of batches", "CharDataset:fixed_batches")
  local nstarts = check_window(self, B, T, "CharDataset:fixed_batches")
  local total, batches = n * B, {}
  local stride = total > 1 and (nstarts - 1) / (total - 1) or 0
  for i = 0, n - 1 do
    local starts = {}
    for b = 1, B do starts[b] = 1 + floor((i * B + b - 1) * stride) end
    batches[i + 1] = { self:windows(starts, T) }
  end
  return batches
end

-- ======================================================= King James Bible

local KJV_COMMAND = "bible -l0 'Genesis 1:1-Revelation 22:21' 2>/dev/null"

-- The whole King James Bible (about 4.3 MB) as Debian's bible-kjv prints it.
function data.kjv_text()
  local p = io_popen(KJV_COMMAND, "r")
  local text = p and p:read("*a")
  if p then p:close() end
  if not text or #text < 1000000 then
    error("data.kjv_text: the `bible` command printed no text: install the Debian package bible-kjv",
          2)
  end
  return text
end

return data
