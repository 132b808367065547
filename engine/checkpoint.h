#pragma once
// Sharded checkpoints. A checkpoint is a directory DIR/step-NNNNNN holding manifest.json
// (config, step, samples seen, layout, partition size) and one file per shard, written by
// the ranks of the first replica (each shard once). Everything is written under a
// temporary name and renamed into place, then DIR/latest is replaced atomically, so a
// crash mid-write leaves the previous checkpoints intact. Random streams are pure
// functions of (seed, sample index), so the step and the samples seen are the whole RNG
// and data state.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/checkpoint_format.h"
#include "engine/config.h"
#include "engine/loss_scaler.h"
#include "engine/sharded_param_store.h"
#include "engine/topology.h"
#include "model/param_layout.h"

namespace mics {


struct ResumePoint {
  int64_t step = 0;          // optimizer steps completed
  int64_t samples_seen = 0;  // global samples consumed
  std::string path;          // the checkpoint directory loaded
  LossScaler::State loss_scaler;  // fp16 runs; empty otherwise
  std::string data;          // the data source's identity at the save; "" in older checkpoints
};

// The newest step-NNNNNN of `dir` whose manifest was written ("" for none).
std::string newest_complete_checkpoint(const std::string& dir);

// Collective, at start-up: the checkpoint directory `--resume <resume>` continues from. A
// directory stands for itself; "latest" and "auto" are decided on rank 0 alone and sent to
// every rank, so all load the same checkpoint whatever their own view of checkpoint.dir
// (a node's stale network file system cache). Both take the step `latest` names, or the
// newest complete checkpoint when that is newer or `latest` is missing (a save cut off
// between its rename and the pointer's; a warning names both). "auto" with nothing to
// continue is "" (start); "latest" with nothing, or a pointer to nothing, throws
// CheckpointError on every rank.
std::string resolve_resume(const Config& config, const Topology& topo, const std::string& resume);

// Collective, at start-up before anything is allocated: checkpoint.dir (when set) is made
// and written to (by every rank that writes shards), and holds no checkpoints unless this
// run continues from the newest of them (`resume_from`: the checkpoint directory it resumes
// from, "" for none); then the leftovers of a save that was cut off are removed. On any
// failure every rank throws CheckpointError naming the key.
void check_checkpoint_dir(const Config& config, const Topology& topo, const std::string& resume_from);

// Collective: every rank calls it at the same step. `data`: the data source's identity (its
// files, exact sizes and windows), which a resume compares with its own: samples_seen counts
// positions in an order that other data would change.
void save_checkpoint(const Config& config, const Topology& topo, const model::ParamLayout& layout,
                     const ShardedParamStore& store, int64_t step, int64_t samples_seen, const std::string& data,
                     const LossScaler::State& loss_scaler = {});

// Collective. `where` is a checkpoint directory, or "latest" (see resolve_resume). Loads
// this rank's shard into `store` after checking that the model matches and that the
// manifest's numbers and layout are in range; then every rank checks that all loaded the
// same step and samples seen. On any rank's failure every rank throws CheckpointError.
ResumePoint load_checkpoint(const std::string& where, const Config& config, const Topology& topo,
                            const model::ParamLayout& layout, ShardedParamStore& store);


}  // namespace mics
