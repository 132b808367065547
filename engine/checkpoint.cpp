#include "engine/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "engine/replace_file.h"
#include "model/model.h"

namespace mics {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  return name;
}

// Writes `bytes` to `path` and forces it to disk before returning.
void write_durably(const fs::path& path, const std::vector<const void*>& parts,
                   const std::vector<size_t>& sizes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw CheckpointError("cannot create " + path.string() + ": " + std::strerror(errno) + ".");
  for (size_t i = 0; i < parts.size(); ++i) {
    const char* p = static_cast<const char*>(parts[i]);
    size_t left = sizes[i];
    while (left > 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n < 0) {
        const std::string why = std::strerror(errno);
        ::close(fd);
        throw CheckpointError("writing " + path.string() + " failed: " + why + ".");
      }
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) throw CheckpointError("cannot flush " + path.string() + " to disk.");
}

json layout_json(const model::ParamLayout& layout) {
  json tensors = json::array();
  for (const model::ParamTensor& t : layout.tensors()) {
    json shape = json::array();
    for (int i = 0; i < t.shape.rank; ++i) shape.push_back(t.shape[i]);
    tensors.push_back({{"name", t.name}, {"shape", shape}, {"layer", t.layer}, {"offset", t.offset},
                       {"decay", t.decay}});
  }
  json layers = json::array();
  for (const model::LayerSpan& s : layout.layers())
    layers.push_back({{"name", s.name}, {"begin", s.begin}, {"size", s.size}});
  return {{"tensors", tensors}, {"layers", layers}, {"total_elements", layout.total_elements()},
          {"parameters", layout.parameter_count()}};
}

// The settings of the checkpoint's run (its manifest's config) that this run changes, as
// "key old -> new", among those that shape what is trained: the model, the data and the
// training loop, less train.steps (extending a run is what resuming is for) and
// train.micro_batch_size (a resume at another N changes it; the loss does not depend on
// it). Others (runtime, mics, checkpoint, log) may change freely.
std::vector<std::string> changed_training_settings(const json& saved, const json& now) {
  std::vector<std::string> changed;
  for (const char* section : {"model", "train", "data"}) {
    if (!saved.contains(section) || !now.contains(section)) continue;
    for (const auto& [key, value] : now.at(section).items()) {
      const std::string name = std::string(section) + "." + key;
      if (name == "train.steps" || name == "train.micro_batch_size") continue;
      const auto old = saved.at(section).find(key);
      if (old == saved.at(section).end() || *old != value)
        changed.push_back(name + " " + (old == saved.at(section).end() ? std::string("(unset)") : old->dump()) + " -> " +
                          value.dump());
    }
  }
  return changed;
}


// Whether checkpoint `a` (a step-NNNNNN name) is of a later step than `b`: past step 999999
// the names grow a digit, so a longer name is a later step.
bool later(const std::string& a, const std::string& b) { return a.size() != b.size() ? a.size() > b.size() : a > b; }

// The checkpoints in `dir` (its step-NNNNNN directories), oldest first.
std::vector<fs::path> checkpoints_in(const fs::path& dir) {
  std::vector<fs::path> steps;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) steps.push_back(e.path());
  std::sort(steps.begin(), steps.end(),
            [](const fs::path& a, const fs::path& b) { return later(b.filename().string(), a.filename().string()); });
  return steps;
}

// What a save that was cut off leaves in `dir`: its temporary step directory (.tmp-step-N)
// and the pointer's temporary file. (A directory named like the latter is not ours: left.)
void remove_leftovers(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
    else if (name == ".latest.tmp" && !e.is_directory()) fs::remove(e.path());
  }
}

// A failed save's own temporary files, removed (best effort) before it throws: on a full
// disk they would keep it full, and the next start would find nowhere to write.
void discard_failed_save(const fs::path& dir, const fs::path& tmp) {
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::is_directory(dir / ".latest.tmp", ec)) fs::remove(dir / ".latest.tmp", ec);
}

// "" when this rank can create a file in `dir`, else why not (a read-only or missing mount
// on its node), for check_checkpoint_dir.
std::string write_refusal(const fs::path& dir, int rank) {
  const fs::path probe = dir / (".write-check-" + std::to_string(rank));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  bool written = fd >= 0 && ::write(fd, "x", 1) == 1;
  std::string why = std::strerror(errno);
  if (fd >= 0 && ::close(fd) != 0 && written) {  // (a network file system may report a full disk only here)
    written = false;
    why = std::strerror(errno);
  }
  std::error_code ec;
  fs::remove(probe, ec);
  if (written) return "";
  return "'checkpoint.dir' " + dir.string() + " cannot be written to" +
         (rank == 0 ? std::string() : " from rank " + std::to_string(rank)) + ": " + why + ".";
}

void prune(const fs::path& dir, int64_t keep) {
  if (keep <= 0) return;
  const std::vector<fs::path> steps = checkpoints_in(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < steps.size(); ++i) fs::remove_all(steps[i]);
}

// check_checkpoint_dir's verdict on rank 0: "" when the run may go on, else why not.
std::string checkpoint_dir_refusal(const fs::path& dir, const std::string& resume_from) {
  const fs::path from = resume_from.empty() ? fs::path() : fs::weakly_canonical(resume_from);
  const bool continues = !from.empty() && from.parent_path() == fs::weakly_canonical(dir);
  if (continues && !fs::exists(dir)) return "";  // nothing to continue: the load says so
  // Made and written to now, not at the first checkpoint: a run must not train for hours
  // before it finds that its checkpoints have nowhere to go.
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    return "'checkpoint.dir' " + dir.string() + " cannot be made a directory" +
           (ec ? ": " + ec.message() : std::string(": something else stands there")) + ".";
  // A run that does not continue from this directory would write its own step-N over the
  // checkpoints there, then prune them as its own.
  const std::vector<fs::path> held = checkpoints_in(dir);
  if (!held.empty() && !continues)
    return "'checkpoint.dir' " + dir.string() + " already holds checkpoints (the newest " +
           held.back().filename().string() + "); this run " +
           (resume_from.empty() ? "starts afresh" : "continues from " + resume_from) +
           " and would overwrite and prune them: continue them with --resume latest (or auto), or set another "
           "checkpoint.dir.";
  // Going back to an older one here would mix two series in one directory: the later
  // checkpoints would count towards checkpoint.keep (pruning the one resumed from) and
  // outlive this run's at steps it does not save.
  if (!held.empty() && later(held.back().filename().string(), from.filename().string()))
    return "--resume " + resume_from + " goes back to an older checkpoint than " + dir.string() + " holds (the newest " +
           held.back().filename().string() + "); to continue from it, set another checkpoint.dir for this run's "
           "checkpoints, or move the later ones out of " + dir.string() + ".";
  // This run's directory: a save cut off before (a full disk) left files that would keep
  // the disk full; gone before the probe, which then tells whether there is room.
  remove_leftovers(dir);
  return write_refusal(dir, 0);
}

// `text` as rank 0 has it, on every rank (collective).
std::string broadcast_from_rank0(std::string text) {
  int64_t size = static_cast<int64_t>(text.size());
  world_broadcast(&size, sizeof size, 0);
  text.resize(static_cast<size_t>(size));
  if (size > 0) world_broadcast(text.data(), static_cast<int>(size), 0);
  return text;
}

// resolve_resume's decision on rank 0: {the checkpoint directory, or "" for none; why the
// run cannot go on, or "" when it can}.
std::pair<std::string, std::string> resume_choice(const std::string& dir, const std::string& resume) {
  if (dir.empty())
    return {"", resume == "latest" ? "--resume latest needs 'checkpoint.dir' in the config." : ""};
  const fs::path pointer = fs::path(dir) / "latest";
  std::ifstream in(pointer);
  std::string name;
  const bool named = static_cast<bool>(in >> name);
  // A save renames its step directory into place, then replaces the pointer: cut off
  // between the two (a kill, a disk that filled up), it leaves a complete checkpoint newer
  // than the pointer names. Refusing it (an older checkpoint than the directory holds) would
  // stop every requeue until someone edits the directory; continuing from it loses nothing.
  const std::string newest = newest_complete_checkpoint(dir);
  const std::string newest_name = fs::path(newest).filename().string();
  if (!newest.empty() && (!named || later(newest_name, name))) {
    if (named)
      spdlog::warn("--resume {}: {} names {}, but {} is newer and complete (a save cut off before it updated the "
                   "pointer?); continuing from {}", resume, pointer.string(), name, newest_name, newest);
    else
      spdlog::warn("--resume {}: {} has no 'latest' pointer (a save cut off before writing it?); continuing from the "
                   "newest complete checkpoint, {}", resume, dir, newest);
    return {newest, ""};
  }
  if (!named) {
    if (resume == "auto" && !fs::exists(pointer)) return {"", ""};  // nothing yet: start
    return {"", "no checkpoint to resume: " + pointer.string() + " is missing or empty."};
  }
  if (!fs::is_directory(fs::path(dir) / name))
    return {"", pointer.string() + " names " + name + ", which does not exist in " + dir + "."};
  return {(fs::path(dir) / name).string(), ""};
}

// After every rank loaded `point` from the same path: a rank whose view of that path differs
// from rank 0's (a node's stale network file system cache) would train another state than
// its peers, and the job would mix them. On a difference, every rank throws naming one.
void agree_on_loaded_state(const ResumePoint& point, const Topology& topo) {
  int64_t first[2] = {point.step, point.samples_seen};
  world_broadcast(first, sizeof first, 0);
  const bool same = point.step == first[0] && point.samples_seen == first[1];
  if (world_all(same)) return;
  std::vector<double> differs(static_cast<size_t>(topo.world), 0.0);
  differs[static_cast<size_t>(topo.rank)] = same ? 0.0 : 1.0;
  world_sum(differs.data(), topo.world);
  const int other = static_cast<int>(std::find(differs.begin(), differs.end(), 1.0) - differs.begin());
  const int64_t count = static_cast<int64_t>(std::count(differs.begin(), differs.end(), 1.0));
  int64_t theirs[2] = {point.step, point.samples_seen};
  world_broadcast(theirs, sizeof theirs, other);
  const auto state = [](const int64_t s[2]) {
    return "step " + std::to_string(s[0]) + " (" + std::to_string(s[1]) + " samples seen)";
  };
  throw CheckpointError("the ranks loaded different checkpoints from " + point.path + ": rank 0 " + state(first) +
                        ", rank " + std::to_string(other) + " " + state(theirs) +
                        (count > 1 ? " (and " + std::to_string(count - 1) + " more ranks differ)" : std::string()) +
                        "; every rank must see the same files there (a node's stale network file system cache?).");
}

// The first field of the manifest that does not hold what this model's layout at the
// checkpoint's partition size `p` has (the spans and offsets the shards are read by), as
// "FIELD is X; ... has Y", or "" when all agree.
std::string layout_difference(const json& manifest, const model::ParamLayout& at_p, int64_t p) {
  const auto differs = [p](const std::string& field, const json& saved, int64_t expected) {
    return field + " is " + saved.dump() + "; this model at partition size " + std::to_string(p) + " has " +
           std::to_string(expected) + ".";
  };
  const json& layers = manifest.at("layout").at("layers");
  const json& tensors = manifest.at("layout").at("tensors");
  if (layers.size() != at_p.layers().size())
    return "layout.layers holds " + std::to_string(layers.size()) + " layers; this model has " +
           std::to_string(at_p.layers().size()) + ".";
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string field = "layout.layers[" + std::to_string(i) + "]";
    if (layers[i].at("begin") != at_p.layers()[i].begin)
      return differs(field + ".begin", layers[i].at("begin"), at_p.layers()[i].begin);
    if (layers[i].at("size") != at_p.layers()[i].size)
      return differs(field + ".size", layers[i].at("size"), at_p.layers()[i].size);
  }
  for (size_t i = 0; i < tensors.size() && i < at_p.tensors().size(); ++i) {
    const std::string field = "layout.tensors[" + std::to_string(i) + "]";
    if (tensors[i].at("layer") != at_p.tensors()[i].layer)
      return differs(field + ".layer", tensors[i].at("layer"), at_p.tensors()[i].layer);
    if (tensors[i].at("offset") != at_p.tensors()[i].offset)
      return differs(field + ".offset", tensors[i].at("offset"), at_p.tensors()[i].offset);
  }
  if (manifest.at("shard_elements") != at_p.total_elements() / p)
    return differs("shard_elements", manifest.at("shard_elements"), at_p.total_elements() / p);
  return "";
}

}  // namespace

std::string newest_complete_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return "";
  try {
    const std::vector<fs::path> steps = checkpoints_in(dir);
    const auto newest = std::find_if(steps.rbegin(), steps.rend(),
                                     [](const fs::path& step) { return fs::exists(step / "manifest.json"); });
    return newest == steps.rend() ? "" : newest->string();
  } catch (const fs::filesystem_error&) {  // unreadable: nothing to continue from (the load would say why)
    return "";
  }
}

std::string resolve_resume(const Config& config, const Topology& topo, const std::string& resume) {
  if (resume != "latest" && resume != "auto") return resume;
  std::pair<std::string, std::string> choice;  // {checkpoint, refusal}
  if (topo.rank == 0) {
    try {
      choice = resume_choice(config.checkpoint.dir, resume);
    } catch (const std::exception& e) {
      choice.second = "--resume " + resume + ": 'checkpoint.dir' " + config.checkpoint.dir + " cannot be read: " + e.what();
    }
  }
  const std::string refusal = broadcast_from_rank0(choice.second);
  if (!refusal.empty()) throw CheckpointError(refusal);
  return broadcast_from_rank0(choice.first);
}

void check_checkpoint_dir(const Config& config, const Topology& topo, const std::string& resume_from) {
  if (config.checkpoint.dir.empty()) return;
  std::string error;
  int probe = 0;  // whether the directory stands, for the other writing ranks to probe
  if (topo.rank == 0) {
    try {
      error = checkpoint_dir_refusal(config.checkpoint.dir, resume_from);
      probe = error.empty() && fs::is_directory(config.checkpoint.dir) ? 1 : 0;
    } catch (const std::exception& e) {
      error = "'checkpoint.dir' " + config.checkpoint.dir + " cannot be used: " + e.what();
    }
  }
  if (!world_all(error.empty()))
    throw CheckpointError(error.empty() ? "'checkpoint.dir' " + config.checkpoint.dir +
                                              " was refused on rank 0; see its message."
                                        : error);
  // Every rank that writes shards writes into it, each from its own node's view of it (its
  // own mount): each must be able to, or the run would stop at its first save.
  world_broadcast(&probe, sizeof probe, 0);
  if (probe == 0) return;
  if (topo.rank != 0 && topo.partition_group() == 0) error = write_refusal(config.checkpoint.dir, topo.rank);
  if (!world_all(error.empty()))
    throw CheckpointError(error.empty() ? "another rank cannot write to 'checkpoint.dir' " + config.checkpoint.dir +
                                              "; see its message."
                                        : error);
}

void save_checkpoint(const Config& config, const Topology& topo, const model::ParamLayout& layout,
                     const ShardedParamStore& store, int64_t step, int64_t samples_seen, const std::string& data,
                     const LossScaler::State& loss_scaler) {
  const fs::path dir = config.checkpoint.dir;
  const std::string name = step_name(step);
  const fs::path tmp = dir / (".tmp-" + name);
  std::string error;
  if (topo.rank == 0) {
    try {
      fs::create_directories(dir);
      remove_leftovers(dir);  // of an interrupted write
      fs::create_directory(tmp);
    } catch (const std::exception& e) {
      error = "cannot prepare checkpoint directory " + dir.string() + ": " + e.what();
    }
  }
  if (!world_all(error.empty())) {
    if (topo.rank == 0) discard_failed_save(dir, tmp);
    throw CheckpointWriteError(error.empty() ? "checkpoint at step " + std::to_string(step) + " failed on rank 0." : error);
  }

  // The first replica's ranks write one shard each.
  if (topo.partition_group() == 0) {
    try {
      const size_t n = static_cast<size_t>(store.shard_elements());
      std::vector<float> master(n), m(n), v(n);
      Tensor views[3] = {store.master(), store.adam_m(), store.adam_v()};
      std::vector<float>* hosts[3] = {&master, &m, &v};
      ShardHeader h{};
      std::memcpy(h.magic, kShardMagic, sizeof kShardMagic);
      h.version = kFormatVersion;
      h.shard_index = static_cast<uint32_t>(topo.shard_index());
      h.partition_size = static_cast<uint32_t>(topo.partition_size);
      h.elements = n;
      uint64_t sum = 0xcbf29ce484222325ull;
      for (int i = 0; i < 3; ++i) {
        store.backend().copy_to_host(hosts[i]->data(), views[i].data, n * sizeof(float));
        sum = fnv1a(hosts[i]->data(), n * sizeof(float), sum);
      }
      h.checksum = sum;
      write_durably(tmp / shard_name(topo.shard_index(), topo.partition_size),
                    {&h, master.data(), m.data(), v.data()},
                    {sizeof h, n * sizeof(float), n * sizeof(float), n * sizeof(float)});
    } catch (const std::exception& e) {
      error = e.what();
      spdlog::error("rank {}: {}", topo.rank, error);
    }
  }
  if (!world_all(error.empty())) {
    if (topo.rank == 0) discard_failed_save(dir, tmp);  // every writer is done with it (it agreed)
    throw CheckpointWriteError(error.empty() ? "writing checkpoint " + name + " failed on another rank; see its message." : error);
  }

  if (topo.rank == 0) {
    try {
      json manifest = {{"format", "mics-train checkpoint"},
                       {"version", kFormatVersion},
                       {"step", step},
                       {"samples_seen", samples_seen},
                       {"data", data},
                       {"partition_size", topo.partition_size},
                       {"world_size", topo.world},
                       {"shard_elements", store.shard_elements()},
                       {"shards", topo.partition_size},
                       {"rng", "counter-based: every stream is a function of (train.seed, sample index)"},
                       {"config", config.to_json()},
                       {"layout", layout_json(layout)}};
      if (loss_scaler.scale > 0)
        manifest["loss_scaler"] = {{"scale", loss_scaler.scale}, {"good_steps", loss_scaler.good_steps}};
      const std::string text = manifest.dump(1);
      write_durably(tmp / "manifest.json", {text.data()}, {text.size()});
      sync_directory(tmp.string());
      const fs::path final_dir = dir / name;
      if (fs::exists(final_dir)) fs::remove_all(final_dir);  // a rerun of the same step
      fs::rename(tmp, final_dir);
      const std::string latest = name + "\n";
      write_durably(dir / ".latest.tmp", {latest.data()}, {latest.size()});
      fs::rename(dir / ".latest.tmp", dir / "latest");
      sync_directory(dir.string());
      prune(dir, config.checkpoint.keep);
      spdlog::info("checkpoint {} written ({} shard files)", final_dir.string(), topo.partition_size);
    } catch (const std::exception& e) {
      error = e.what();
      discard_failed_save(dir, tmp);  // (a step directory already renamed into place stays: it is complete)
    }
  }
  if (!world_all(error.empty()))
    throw CheckpointWriteError(error.empty() ? "committing checkpoint " + name + " failed on rank 0." : error);
}

ResumePoint load_checkpoint(const std::string& where, const Config& config, const Topology& topo,
                            const model::ParamLayout& layout, ShardedParamStore& store) {
  ResumePoint point;
  std::string error;
  // Which checkpoint "latest" is, rank 0 decides for all (outside the try: a refusal is
  // already every rank's).
  const fs::path dir = where == "latest" ? fs::path(resolve_resume(config, topo, where)) : fs::path(where);
  try {
    point.path = dir.string();
    const fs::path manifest_path = dir / "manifest.json";
    const json manifest = read_manifest(dir);

    // Same model: the same type, then every tensor by name and shape, in the same order.
    const json saved_type = manifest.contains("config") ? manifest.at("config").at("model").value("type", json()) : json();
    if (saved_type.is_string() && saved_type != config.model.type)
      throw CheckpointError(manifest_path.string() + ": the checkpoint is of a " + saved_type.get<std::string>() +
                            " model; this config trains a " + config.model.type + ".");
    const json& tensors = manifest.at("layout").at("tensors");
    const json mine = layout_json(layout).at("tensors");
    if (tensors.size() != mine.size())
      throw CheckpointError(manifest_path.string() + " holds " + std::to_string(tensors.size()) +
                            " tensors; this model has " + std::to_string(mine.size()) + ".");
    for (size_t i = 0; i < mine.size(); ++i) {
      if (tensors[i].at("name") != mine[i].at("name") || tensors[i].at("shape") != mine[i].at("shape"))
        throw CheckpointError(manifest_path.string() + ": tensor " + tensors[i].at("name").dump() + " " +
                              tensors[i].at("shape").dump() + " does not match this model's " +
                              mine[i].at("name").dump() + " " + mine[i].at("shape").dump() + ".");
    }
    // Same model, so a refused load says only why; then what else the run changes.
    if (topo.rank == 0 && manifest.contains("config")) {
      const std::vector<std::string> changed = changed_training_settings(manifest.at("config"), config.to_json());
      std::string list;
      for (const std::string& c : changed) list += (list.empty() ? "" : "; ") + c;
      if (!changed.empty())
        spdlog::warn("resuming {} with settings its run did not have ({}): the data position and the losses need "
                     "not continue that run's", dir.string(), list);
    }
    // Numbers the run would compute with: refused out of range, naming the field.
    const int64_t p = manifest.at("partition_size").get<int64_t>();
    if (p < 1 || p > kMaxPartitionSize)
      throw CheckpointError(manifest_path.string() + ": partition_size " + std::to_string(p) + " is not between 1 and " +
                            std::to_string(kMaxPartitionSize) + ".");
    point.step = manifest.at("step").get<int64_t>();
    point.samples_seen = manifest.at("samples_seen").get<int64_t>();
    if (point.step < 0) throw CheckpointError(manifest_path.string() + ": step " + std::to_string(point.step) + " is negative.");
    if (point.samples_seen < 0)
      throw CheckpointError(manifest_path.string() + ": samples_seen " + std::to_string(point.samples_seen) +
                            " is negative.");
    // The weights are read by the manifest's spans and offsets: they must be this model's
    // at the checkpoint's partition size, or the reads land on other tensors' values.
    const std::string moved =
        layout_difference(manifest, model::build_layout(config.model_spec(), model::shard_multiple_for(p)), p);
    if (!moved.empty()) throw CheckpointError(manifest_path.string() + ": " + moved);
    if (manifest.contains("data") && manifest.at("data").is_string()) point.data = manifest.at("data").get<std::string>();
    if (manifest.contains("loss_scaler")) {
      const json& ls = manifest.at("loss_scaler");
      point.loss_scaler = {ls.at("scale").get<double>(), ls.at("good_steps").get<int64_t>()};
      if (!(point.loss_scaler.scale > 0) || !std::isfinite(point.loss_scaler.scale) || point.loss_scaler.good_steps < 0)
        throw CheckpointError(manifest_path.string() + " has an invalid loss_scaler entry.");
    }

    // This rank's new shard, filled run by run from the old shards that hold each piece.
    const size_t n = static_cast<size_t>(store.shard_elements());
    std::array<std::vector<float>, 3> own;  // master, Adam m, Adam v
    for (auto& a : own) a.assign(n, 0.0f);  // padding stays zero
    OldShards old(dir, manifest);
    for (size_t ti = 0; ti < layout.tensors().size(); ++ti) {
      const model::ParamTensor& t = layout.tensors()[ti];
      for (const model::FlatRange& run : store.ranges()) {
        const int64_t lo = std::max(run.flat_begin, t.offset), hi = std::min(run.flat_begin + run.size, t.offset + t.numel());
        if (lo >= hi) continue;
        const size_t to = static_cast<size_t>(run.local_offset + (lo - run.flat_begin));
        old.read(ti, lo - t.offset, hi - lo, {own[0].data() + to, own[1].data() + to, own[2].data() + to});
      }
    }
    Tensor views[3] = {store.master(), store.adam_m(), store.adam_v()};
    for (int a = 0; a < 3; ++a)
      store.backend().copy_from_host(views[a].data, own[static_cast<size_t>(a)].data(), n * sizeof(float));
    if (p != topo.partition_size)
      spdlog::info("resharded {} from partition size {} to {}", dir.string(), p, topo.partition_size);
  } catch (const CheckpointError& e) {
    error = e.what();
  } catch (const json::exception& e) {  // a manifest whose fields have the wrong types
    error = (fs::path(point.path) / "manifest.json").string() + " is malformed: " + e.what() + ".";
  } catch (const std::exception& e) {
    error = "cannot load checkpoint " + dir.string() + ": " + e.what();
  }
  if (!world_all(error.empty()))
    throw CheckpointError(error.empty() ? "loading checkpoint " + dir.string() + " failed on another rank; see its message."
                                        : error);
  agree_on_loaded_state(point, topo);
  return point;
}

}  // namespace mics
