-- t/join.t -- cat and stack (ops/join.c) against plain-Lua references on
-- contiguous, transposed and 0-size members; gradients for any number of
-- members, some not requiring grad (a tape node holds at most 4 inputs, so
-- long joins are recorded as chains); error messages.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

u.seed(5)

-- Gradient checks (u.gradcheck): f32 central differences, eps 1e-3,
-- |numeric - autograd| <= 1e-2 + 1e-2 * max(|numeric|, |autograd|)
-- (glia.gradcheck's defaults).

-- ============================================================ reference

-- cat of nested 2-D tables along dim 1 (rows) or 2 (columns).
local function ref_cat2(list, d)
  local out = {}
  for _, m in ipairs(list) do
    local rows = m:totable()
    for i, row in ipairs(rows) do
      if d == 1 then
        out[#out + 1] = row
      else
        out[i] = out[i] or {}
        for _, v in ipairs(row) do out[i][#out[i] + 1] = v end
      end
    end
  end
  return out
end

-- stack of 2-D members {R, C} along dim d of the {n, R, C}-like result.
local function ref_stack2(list, d)
  local M = {}
  for k, m in ipairs(list) do M[k] = m:totable() end
  local n, R, C = #list, #M[1], #M[1][1]
  local out = {}
  if d == 1 then
    for k = 1, n do out[k] = M[k] end
  elseif d == 2 then
    for i = 1, R do
      out[i] = {}
      for k = 1, n do out[i][k] = M[k][i] end
    end
  else
    for i = 1, R do
      out[i] = {}
      for j = 1, C do
        out[i][j] = {}
        for k = 1, n do out[i][j][k] = M[k][i][j] end
      end
    end
  end
  return out
end

-- ================================================================= cat

do
  local a, b, c = glia.randn(2, 3), glia.randn(4, 3), glia.randn(1, 3)
  local y = glia.cat({ a, b, c }, 1)
  t.ok(u.same_shape(y, { 7, 3 }) and u.identical(y, ref_cat2({ a, b, c }, 1)), "cat along dim 1 stacks rows in order")
  t.ok(u.identical(glia.cat({ a, b, c }), y), "cat defaults to dim 1")
  local p, q = glia.randn(2, 1), glia.randn(2, 4)
  y = glia.cat({ p, q, p }, -1)
  t.ok(u.same_shape(y, { 2, 6 }) and u.identical(y, ref_cat2({ p, q, p }, 2)),
       "cat along dim -1 joins columns, a member may repeat")
  local s = glia.randn(3, 2):t()
  y = glia.cat({ q, s }, 2)
  t.ok(u.identical(y, ref_cat2({ q, s }, 2)), "cat reads a transposed member correctly")
  local e = glia.zeros(2, 0)
  y = glia.cat({ e, q, e }, 2)
  t.ok(u.same_shape(y, { 2, 4 }) and u.identical(y, q), "0-size members add nothing to a cat")
  t.ok(u.same_shape(glia.cat({ e, e }, 2), { 2, 0 }), "cat of only 0-size members is 0-size")
  local ia, ib = glia.tensor({ { 1, 2 } }, "i64"), glia.tensor({ { 3, 4 } }, "i64")
  y = glia.cat({ ia, ib })
  t.ok(y:dtype() == "i64" and u.identical(y, { { 1, 2 }, { 3, 4 } }), "cat keeps an i64 dtype")
  local x3 = glia.randn(2, 3, 4)
  y = glia.cat({ x3, x3:narrow(2, 2, 2) }, 2)
  t.ok(u.same_shape(y, { 2, 5, 4 }) and u.identical(y:narrow(2, 1, 3), x3)
       and u.identical(y:narrow(2, 4, 2), x3:narrow(2, 2, 2)),
       "cat of 3-D tensors along the middle dim places each member in its slice")

  t.error_like(function() glia.cat({ a, glia.randn(2, 4) }, 1) end,
               "glia%.cat: member 2 has shape {2,4}, member 1 has {2,3}",
               "cat with mismatched shapes names both shapes")
  t.error_like(function() glia.cat({ a, glia.randn(2, 3, 1) }, 1) end, "member 2 has shape {2,3,1}",
               "cat refuses members of different ranks")
  t.error_like(function() glia.cat({ a, glia.zeros(2, 3, "i64") }) end,
               "glia%.cat: member 2 is i64 {2,3}, member 1 is f32 {2,3}", "cat refuses mixed dtypes")
  t.error_like(function() glia.cat({ a }, 3) end, "dim 3 out of range", "cat refuses a dim past the members' rank")
  t.error_like(function() glia.cat({}, 1) end, "glia%.cat: expected a non%-empty list of tensors",
               "cat refuses an empty list")
  t.error_like(function() glia.cat({ a, 3 }) end, "element 2", "cat refuses a list holding a non-tensor")
end

-- ===================================================== cat: gradients

do
  u.gradcheck(function(a, b) return glia.cat({ a, b }, 2) end, { glia.randn(2, 3), glia.randn(2, 2) },
              "cat gradient for two members matches central differences")
  local k1, k2, k3 = glia.randn(3, 1), glia.randn(3, 2), glia.randn(3, 0)
  u.gradcheck(function(a, b, c, d)
      return glia.cat({ a, k1, b, k2, c, k3, d }, 2)
    end, { glia.randn(3, 2), glia.randn(3, 1), glia.randn(3, 3), glia.randn(3, 2) },
    "cat gradient for 7 members, 3 of them constant, matches central differences")

  -- 40 members of 1..3 rows (a tree of nodes 3 levels deep): every member
  -- gets exactly its slice.
  local members, sizes, off = {}, {}, 0
  for i = 1, 40 do
    sizes[i] = (i % 3) + 1
    members[i] = glia.randn(sizes[i], 2):requires_grad()
  end
  local y = glia.cat(members, 1)
  local g = glia.randn(y:shape())
  y:backward(g)
  local all = true
  for i = 1, 40 do
    all = all and members[i].grad ~= nil and u.identical(members[i].grad, g:narrow(1, off + 1, sizes[i]))
    off = off + sizes[i]
  end
  t.ok(all, "cat of 40 members hands each member its slice of the gradient")

  -- Only one member requires grad, at the head, in the middle or at the tail.
  for _, pos in ipairs({ 1, 5, 9 }) do
    local xs, want = {}, nil
    for i = 1, 9 do xs[i] = glia.randn(1, 3) end
    xs[pos]:requires_grad()
    local out = glia.cat(xs, 1)
    local go = glia.randn(9, 3)
    out:backward(go)
    want = go:narrow(1, pos, 1)
    local others = true
    for i = 1, 9 do if i ~= pos and xs[i].grad then others = false end end
    t.ok(out:needs_grad() and u.identical(xs[pos].grad, want) and others,
         "cat of 9 with only member " .. pos .. " requiring grad routes it its slice, no other")
  end
  t.ok(not glia.cat({ glia.randn(2), glia.randn(3) }):needs_grad(),
       "cat of members that need no grad records nothing")
  local r = glia.randn(2, 2):requires_grad()
  t.ok(not glia.no_grad(glia.cat, { r, r }):needs_grad(), "cat under no_grad records nothing")
  u.gradcheck(function(a) return glia.cat({ a, a:t() }, 1) end, { glia.randn(3, 3) },
              "cat gradient of a member used twice (once transposed) matches central differences")
end

-- =============================================================== stack

do
  local a, b, c = glia.randn(2, 3), glia.randn(2, 3), glia.randn(3, 2):t()
  for _, d in ipairs({ 1, 2, 3 }) do
    local y = glia.stack({ a, b, c }, d)
    local want = d == 1 and { 3, 2, 3 } or d == 2 and { 2, 3, 3 } or { 2, 3, 3 }
    t.ok(u.same_shape(y, want) and u.identical(y, ref_stack2({ a, b, c }, d)),
         "stack along dim " .. d .. " inserts the new dim there (transposed member included)")
  end
  t.ok(u.identical(glia.stack({ a, b }, -1), glia.stack({ a, b }, 3)), "stack dim -1 is the new last dim")
  t.ok(u.identical(glia.stack({ a, b }), glia.stack({ a, b }, 1)), "stack defaults to dim 1")
  t.ok(u.same_shape(glia.stack({ glia.zeros(0, 2), glia.zeros(0, 2) }, 2), { 0, 2, 2 }),
       "stack of 0-size members keeps the empty dim")
  local s = glia.stack({ glia.tensor(1), glia.tensor(2) })
  t.ok(u.same_shape(s, { 2 }) and u.identical(s, { 1, 2 }), "stack of 0-D members is 1-D")
  t.error_like(function() glia.stack({ a, glia.randn(3, 2) }) end,
               "glia%.stack: member 2 has shape {3,2}, member 1 has {2,3}", "stack with different shapes names both")
  t.error_like(function() glia.stack({ a, b }, 4) end, "dim 4 out of range", "stack refuses a dim past ndim + 1")
  u.gradcheck(function(p, q, r, s, v) return glia.stack({ p, q, r, s, v }, 2) end,
              { glia.randn(2, 2), glia.randn(2, 2), glia.randn(2, 2), glia.randn(2, 2), glia.randn(2, 2) },
              "stack gradient for 5 members matches central differences")
  local k = glia.randn(3)
  u.gradcheck(function(p, q) return glia.stack({ k, p, k, k, q, k }, 1) end, { glia.randn(3), glia.randn(3) },
              "stack gradient for 6 members, 4 constant, matches central differences")
end

-- ====================================================== out of memory

do
  local xs, g = {}, glia.randn(3, 14)
  for i = 1, 7 do xs[i] = glia.randn(3, 2) end
  for i = 1, 7, 2 do xs[i]:requires_grad() end
  u.oom_ok(function() glia.cat(xs, 2):backward(g) end,
         "cat of 7 members and its backward fail cleanly at every allocation")
  u.oom_ok(function() glia.stack(xs, 1):backward(glia.randn(7, 3, 2)) end,
         "stack of 7 members and its backward fail cleanly at every allocation")
end

t.done()
