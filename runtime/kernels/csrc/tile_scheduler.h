// Persistent tile schedule: the grid holds one CTA per SM; CTA i starts with tile i and then
// takes the next untaken tile from a global counter whenever its producer is ready for one, so
// a CTA whose tiles visit few blocks takes more tiles (random masks give tiles unequal work).
// A tile is one (query block, head, batch). Query blocks vary fastest, so the
// tiles in flight at once read the K/V of one or two heads, which then stay in L2 (heads
// fastest put every head's K/V in flight together and ran 27% slower at S 16K); they go in
// descending order, the longest causal rows first.
#pragma once

#include <cstdint>

#include <cute/config.hpp>

namespace sas {

struct Tile {
  int m_block;
  int head;
  int batch;
};

// A tile as the producer hands it to the consumers through shared memory: its index in the
// schedule (>= num_tiles: no more work), the tile itself, its valid keys, its block counts
// and its two block lists, so the consumers need none of the index arithmetic again.
struct PostedTile {
  int index;
  Tile tile;
  int kv_len;
  int full_count;
  int total;
  const int32_t* full;
  const int32_t* partial;
};

struct TileScheduler {
  int m_blocks;
  int heads;
  int batch;

  CUTE_HOST_DEVICE int num_tiles() const { return m_blocks * heads * batch; }

  CUTE_HOST_DEVICE Tile tile(int index) const {
    const int head_batch = index / m_blocks;
    return {m_blocks - 1 - index % m_blocks, head_batch % heads, head_batch / heads};
  }
};

}  // namespace sas
