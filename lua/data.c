/*
** lua/data.c -- placeholder: the data-loading functions of glia.core.
*/
#include "binding.h"

void glia_lua_open_data(lua_State *L, int mod_idx) {
  (void)L;
  (void)mod_idx;
}
