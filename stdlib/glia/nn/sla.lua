-- glia.nn.sla -- SLA: simplified linear attention (SLAB, Guo et al. 2024),
-- a token mixer for a 2-D grid of tokens whose cost is linear in the
-- number of tokens.
--
-- Shapes: x {B,N,C}, tokens in row-major order of a grid Hs x Ws = N, h
-- heads of c = C/h channels.
--   [q, k, v] = x Wqkv^T + bqkv                      qkv: Linear C -> 3C
--   k        += positional_encoding                  {N,C}, learnable, 0 at start
--   y  = glia.linear_attention(q, k, v) per head      ReLU on q and k inside:
--        y_i = sum_j <Qr_i,Kr_j> v_j / (sum_j <Qr_i,Kr_j> + 1e-6)
--   y += dwc(v) per head: v of a head as an image {c,Hs,Ws} through one
--        depth-wise kxk convolution (padding k//2, bias) whose c filters
--        all heads share (weight {c,1,k,k}, bias {c})
--   out = proj(merge heads of y)                     proj: Linear C -> C
-- There is no softmax scale and no attention dropout. The positional term
-- fixes N, so the grid is given when the layer is built and an input of
-- another length is an error. The SLAB reference code stores the positional term as {1,N,C}: view a
-- loaded one as {N,C}.
--
-- Initialization: PyTorch's defaults for the linears and for the depth-wise
-- Conv2d dwc (U(-1/k, 1/k) for its weight and bias: fan_in = k*k).
local glia   = require "glia"
local Module = require "glia.nn.module"
local options = require "glia.options"
local lin    = require "glia.nn.linear"
local conv   = require "glia.nn.conv"

local format, concat, type, floor = string.format, table.concat, type, math.floor
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local Parameter, check_int = Module.Parameter, Module.check_int

local M = {}

-- =================================================================== SLA

-- SLA(dim, heads [, {grid = {Hs, Ws}, kernel_size = 5, qkv_bias = true}]);
-- grid is required (a number g means g x g); kernel_size is odd.
local SLA = Module:extend("SLA")
M.SLA = SLA

function SLA:__init(dim, heads, opts)
  opts = options.check("glia.nn.SLA", opts, { "grid", "kernel_size", "qkv_bias" }, 2)
  check_int("SLA", "dim", dim, 1)
  check_int("SLA", "heads", heads, 1)
  if dim % heads ~= 0 then
    error(format("glia.nn.SLA: dim %d is not a multiple of heads %d", dim, heads), 3)
  end
  local grid = opts.grid
  if type(grid) == "number" then grid = { grid, grid } end
  if type(grid) ~= "table" or #grid ~= 2 then
    error("glia.nn.SLA: grid = {Hs, Ws} (or a number for a square grid) is required: the " ..
          "positional term and the convolution fix the token grid", 3)
  end
  check_int("SLA", "grid height", grid[1], 1)
  check_int("SLA", "grid width", grid[2], 1)
  local k = opts.kernel_size or 5
  check_int("SLA", "kernel_size", k, 1)
  if k % 2 == 0 then
    error(format("glia.nn.SLA: kernel_size must be odd (padding k//2 keeps the grid), got %d", k), 3)
  end
  self.dim, self.heads, self.head_dim = dim, heads, floor(dim / heads)
  self.grid, self.kernel_size = { grid[1], grid[2] }, k
  self.num_tokens = grid[1] * grid[2]
  self.qkv = lin.Linear(dim, 3 * dim, { bias = opts.qkv_bias ~= false })
  self.positional_encoding = Parameter(glia.zeros(self.num_tokens, dim))
  local c = self.head_dim
  self.dwc = conv.Conv2d(c, c, k, { padding = floor(k / 2), groups = c })
  self.proj = lin.Linear(dim, dim)
end

-- x {B,N,C} -> {B,N,C}
function SLA:forward(x)
  local C, N, H, c = self.dim, self.num_tokens, self.heads, self.head_dim
  if x:dim() ~= 3 or x:size(2) ~= N or x:size(3) ~= C then
    error(format("glia.nn.SLA: expected input {B,%d,%d} (%d tokens of a %dx%d grid, dim %d), got {%s}",
                 N, C, N, self.grid[1], self.grid[2], C, concat(x:shape(), ",")), 2)
  end
  local B = x:size(1)
  local qkv = self.qkv(x)
  local function heads(t) return t:reshape(B, N, H, c):transpose(2, 3) end -- {B,H,N,c}
  local q = heads(qkv:narrow(3, 1, C))
  local k = heads(qkv:narrow(3, C + 1, C) + self.positional_encoding)
  local v = heads(qkv:narrow(3, 2 * C + 1, C))
  local y = glia.linear_attention(q, k, v)
  -- v of every (batch, head) as a c-channel image through the shared filters
  local img = v:transpose(3, 4):reshape(B * H, c, self.grid[1], self.grid[2])
  y = y + self.dwc(img):reshape(B, H, c, N):transpose(3, 4)
  return self.proj(y:transpose(2, 3):reshape(B, N, C))
end

function SLA:extra_repr()
  return format("dim=%d, heads=%d, grid=%dx%d, kernel_size=%d", self.dim, self.heads,
                self.grid[1], self.grid[2], self.kernel_size)
end

return M
