-- fuzz/make_corpus.lua -- writes the fuzzers' seed corpus: small valid and
-- edge-case safetensors and IDX files, a few hundred bytes each.
--
--   bin/glia fuzz/make_corpus.lua [dir]     (default dir: fuzz/corpus)
--
-- Valid safetensors files come from glia.save itself; the rest are built
-- byte by byte, each one near a check of the readers (a header length past
-- the file, offsets that overlap or fall short, every dtype, 0-size and
-- 8-dim shapes, escapes, metadata, nesting). IDX files cover each element
-- type, plain and gzipped (by the gzip tool), truncated and too long.
local glia = require "glia"

local dir = arg[1] or "fuzz/corpus"
local st_dir, idx_dir = dir .. "/safetensors", dir .. "/idx"
os.execute("mkdir -p " .. st_dir .. " " .. idx_dir)

local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

-- little- and big-endian unsigned integers of w bytes
local function le(v, w)
  local t = {}
  for i = 1, w do t[i] = string.char(v % 256); v = math.floor(v / 256) end
  return table.concat(t)
end
local function be(v, w) return le(v, w):reverse() end

-- ============================================================ safetensors

glia.save(st_dir .. "/valid_f32", { w = glia.arange(6):reshape(2, 3) })
glia.save(st_dir .. "/valid_dtypes", {
  a = glia.tensor({ 1.5, -2 }, "f64"), b = glia.tensor({ 3, -4 }, "i64"),
  c = glia.tensor({ 5, 6 }, "i32"), d = glia.tensor({ 7, 255 }, "u8"),
  e = glia.tensor({ 1, 0, 1 }, "bool"), s = glia.tensor(2.5),
}, { step = "3", note = "quote \" and \\ and \n" })
glia.save(st_dir .. "/valid_empty_tensor", { z = glia.zeros(0, 4) })
glia.save(st_dir .. "/valid_no_tensors", {}, { only = "metadata" })

-- A file from a header string and a data buffer.
local function st(header, data) return le(#header, 8) .. header .. (data or "") end
local function entry(name, dtype, shape, b, e)
  return string.format('"%s":{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}',
                       name, dtype, shape, b, e)
end
local raw = {
  f16 = st("{" .. entry("h", "F16", "3", 0, 6) .. "}", le(0x3C00, 2) .. le(0x0001, 2) .. le(0xFC00, 2)),
  bf16 = st("{" .. entry("b", "BF16", "2", 0, 4) .. "}", le(0x3F80, 2) .. le(0x7FC0, 2)),
  i8_i16 = st("{" .. entry("a", "I8", "2", 0, 2) .. "," .. entry("b", "I16", "1", 2, 4) .. "}",
              "\255\127" .. le(0x8000, 2)),
  unaligned = st("{" .. entry("u", "U8", "1", 0, 1) .. "," .. entry("f", "F32", "1", 1, 5) .. "}",
                 "\1" .. le(0x3F800000, 4)),
  dims8 = st("{" .. entry("d", "U8", "1,1,1,1,1,1,1,2", 0, 2) .. "}", "\1\2"),
  dims9 = st("{" .. entry("d", "U8", "1,1,1,1,1,1,1,1,2", 0, 2) .. "}", "\1\2"),
  scalar = st("{" .. entry("s", "I32", "", 0, 4) .. "}", le(7, 4)),
  overlap = st("{" .. entry("a", "U8", "2", 0, 2) .. "," .. entry("b", "U8", "2", 1, 3) .. "}", "abc"),
  short_offsets = st("{" .. entry("a", "F32", "2", 0, 4) .. "}", "abcdefgh"),
  past_end = st("{" .. entry("a", "U8", "4", 0, 4) .. "}", "ab"),
  reversed = st("{" .. entry("a", "U8", "0", 4, 0) .. "}", "abcd"),
  duplicate = st("{" .. entry("a", "U8", "1", 0, 1) .. "," .. entry("a", "U8", "1", 1, 2) .. "}", "ab"),
  huge_dim = st("{" .. entry("a", "U8", "281474976710656,281474976710656", 0, 0) .. "}"),
  empty_huge_dims = st("{" .. entry("e", "U8", "0,281474976710656,281474976710656", 0, 0) .. "}"),
  bad_dtype = st("{" .. entry("a", "Q4", "1", 0, 1) .. "}", "a"),
  escapes = st('{"\\u00e9\\n\\"x\\\\":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "a"),
  unknown_keys = st('{"a":{"dtype":"U8","extra":[1,{"x":[true,null,-1.5e3]}],"shape":[1],' ..
                    '"data_offsets":[0,1]}}', "a"),
  deep = st('{"a":{"x":[[[[[[[[[[1]]]]]]]]]],"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "a"),
  meta_only = st('{"__metadata__":{"k":"v","k2":"v2"}}'),
  meta_bad = st('{"__metadata__":{"k":1}}'),
  header_past_file = le(1000, 8) .. "{}",
  header_huge = le(2 ^ 53, 8) .. "{}",
  truncated = "\2\0\0\0",
  empty_header = st(""),
  trailing = st("{} x"),
  padded = st("{}      "),
  control_char = st('{"a\1":{}}'),
}
for name, bytes in pairs(raw) do write(st_dir .. "/" .. name, bytes) end

-- ==================================================================== IDX

-- An IDX file: type byte, dims (big-endian u32 each), then the data.
local function idx(code, dims, data)
  local t = { "\0\0", string.char(code), string.char(#dims) }
  for _, d in ipairs(dims) do t[#t + 1] = be(d, 4) end
  t[#t + 1] = data
  return table.concat(t)
end
local idx_files = {
  u8 = idx(0x08, { 2, 3 }, "\0\1\2\3\4\255"),
  i8 = idx(0x09, { 3 }, "\255\0\127"),
  i16 = idx(0x0B, { 2 }, be(0x8000, 2) .. be(5, 2)),
  i32 = idx(0x0C, { 2 }, be(0xFFFFFFFF, 4) .. be(7, 4)),
  f32 = idx(0x0D, { 1, 2 }, be(0x3F800000, 4) .. be(0x7FC00000, 4)),
  f64 = idx(0x0E, { 1 }, be(0x3FF00000, 4) .. be(0, 4)),
  zero_size = idx(0x08, { 0, 5 }, ""),
  dims8 = idx(0x08, { 1, 1, 1, 1, 1, 1, 1, 2 }, "\1\2"),
  dims9 = idx(0x08, { 1, 1, 1, 1, 1, 1, 1, 1, 2 }, "\1\2"),
  dims0 = "\0\0\8\0",
  truncated_data = idx(0x08, { 10 }, "\1\2\3"),
  too_long = idx(0x08, { 2 }, "\1\2\3"),
  truncated_header = "\0\0\8\2\0\0",
  bad_type = idx(0x07, { 1 }, "\1"),
  bad_magic = "\1\0\8\1\0\0\0\1\1",
  huge = idx(0x0E, { 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF }, ""),
}
for name, bytes in pairs(idx_files) do write(idx_dir .. "/" .. name, bytes) end
-- gzipped copies of a few, as MNIST ships
for _, name in ipairs({ "u8", "f32", "truncated_data", "too_long", "huge" }) do
  os.execute(string.format("gzip -9 -n -c %s/%s > %s/%s.gz", idx_dir, name, idx_dir, name))
end
-- a gzip stream cut short
local gz = assert(io.open(idx_dir .. "/u8.gz", "rb")):read("a")
write(idx_dir .. "/gz_cut", gz:sub(1, #gz - 6))
