-- t/dist/train.lua -- what t/distributed.t runs under mpirun (and alone):
-- steps of AdamW on a small MLP at a global batch of 16 from a shuffled
-- DataLoader, then rank 0 saves the parameters to out.
--   glia t/dist/train.lua MODE STEPS OUT [BUCKET_MB]
-- MODE "ddp" wraps the model in dist.DataParallel (each rank its part of
-- every batch); "single" is one process on the whole batch. Each rank starts
-- from a different init (seed 100 + rank): DataParallel must copy rank 0's.
-- The model has a parameter that no step uses (its .grad must stay nil).
local glia = require "glia"
local nn = require "glia.nn"
local optim = require "glia.optim"
local data = require "glia.data"
local dist = require "glia.distributed"

local mode, steps, out, bucket_mb = arg[1], tonumber(arg[2]), arg[3], tonumber(arg[4])
local rank, world = 0, 1
if mode == "ddp" then rank, world = dist.init() end

local Net = nn.Module:extend("Net")
function Net:__init()
  self.fc1 = nn.Linear(8, 32)
  self.fc2 = nn.Linear(32, 32)
  self.unused = nn.Linear(4, 4)
  self.fc3 = nn.Linear(32, 5)
end
function Net:forward(x)
  return self.fc3(glia.tanh(self.fc2(glia.relu(self.fc1(x)))))
end

glia.manual_seed(7) -- the same data everywhere
local x = glia.randn(96, 8)
local y = glia.randint(1, 6, 96)
glia.manual_seed(100 + rank)
local net = Net()
local model = mode == "ddp" and dist.DataParallel(net, { bucket_mb = bucket_mb or 25 }) or net
local opt = optim.AdamW(net:parameters(), { lr = 1e-2 })
local loader = data.DataLoader(data.TensorDataset(x, y), { batch_size = 16, shuffle = true, seed = 3,
                                                          rank = rank, world_size = world })
local step = 0
while step < steps do
  for xb, yb in loader:iter() do
    if step == steps then break end
    opt:zero_grad()
    nn.F.cross_entropy(model(xb), yb):backward()
    if mode == "ddp" then model:sync() end
    assert(net.unused.weight.grad == nil, "a parameter no step uses keeps .grad nil")
    opt:step()
    step = step + 1
  end
end
if rank == 0 then glia.save(out, net:state_dict()) end
