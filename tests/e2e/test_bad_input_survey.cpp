// Every kind of bad input the command line can be handed: configs, flags, data files,
// checkpoints, Hugging Face weight files and config.json, export targets. Each one must
//   - exit with code 2 (README: "bad flags, config, data or checkpoint"),
//   - print exactly one line, "mics-train: error: ...", that names the key, flag or file,
//   - leave every file on disk as it was: the valid checkpoint directory, the case's own
//     empty checkpoint.dir (checkpoint.every=1, keep=1: a run that wrongly got going would
//     write there, or, continuing the valid directory, write and prune that), and the bad
//     inputs themselves.
// One test over one table, so the survey's size is visible in one place and the valid
// checkpoint is trained once.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <vector>

#include <sys/stat.h>

#include "engine/safetensors.h"
#include "kernels/cuda/cuda_backend.h"
#include "tests/e2e/cli_runner.h"

namespace {

namespace fs = std::filesystem;
using mics::test::run_cli;
using mics::test::source_path;
using mics::test::TempDir;
using nlohmann::json;

const char* kShape =
    " --set train.seq_len=32 --set model.max_positions=32 --set model.hidden=64 --set model.layers=2"
    " --set train.micro_batch_size=2 --set train.global_batch_size=4 --log-level warn";

// What every case can draw on: its own directory for bad files, and the valid artefacts.
struct Env {
  const TempDir& dir;    // this case's scratch directory (snapshotted too)
  std::string good_ck;   // a valid checkpoint directory: latest -> step-000002
  std::string good_hf;   // a valid exported .safetensors of the same model
  std::string gpt_tiny;  // configs/gpt-tiny.json
  // A run of the valid model's shape, checkpointing into this case's own empty directory
  // (a fresh run into the valid one is itself refused: fresh_run_into_checkpoints).
  std::string run(const std::string& extra) const {
    fs::create_directories(dir.file("ck-out"));
    return run_into(dir.file("ck-out"), extra);
  }
  // The same continuing the valid directory's latest checkpoint, writing its own there.
  std::string resume_latest(const std::string& extra) const { return run_into(good_ck, extra + " --resume latest"); }
  std::string run_into(const std::string& checkpoint_dir, const std::string& extra) const {
    return "--config " + gpt_tiny + kShape + " --steps 3 --set checkpoint.dir=" + checkpoint_dir +
           " --set checkpoint.every=1 --set checkpoint.keep=1 " + extra;
  }
  // A copy of the valid checkpoint's step-000002 (or the whole directory) to damage.
  std::string copy_step(const std::string& name) const {
    fs::copy(good_ck + "/step-000002", dir.file(name), fs::copy_options::recursive);
    return dir.file(name);
  }
  std::string copy_dir(const std::string& name) const {
    fs::copy(good_ck, dir.file(name), fs::copy_options::recursive);
    return dir.file(name);
  }
};

struct Case {
  const char* name;
  // Prepares the bad input under env.dir; returns {arguments, fragment the message must hold}.
  std::function<std::pair<std::string, std::string>(const Env&)> make;
};

std::string shard_bytes(int32_t magic, int32_t version, int32_t declared, int32_t actual, uint16_t token = 7) {
  std::vector<int32_t> header(256, 0);
  header[0] = magic;
  header[1] = version;
  header[2] = declared;
  std::string bytes(reinterpret_cast<const char*>(header.data()), header.size() * 4);
  std::vector<uint16_t> tokens(static_cast<size_t>(actual), token);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  return bytes;
}

// A config case: gpt-tiny.json edited, run with the valid checkpoint as its checkpoint.dir.
Case config_case(const char* name, std::function<void(json&)> edit, std::string expected) {
  return {name, [edit, expected](const Env& e) {
            std::ifstream in(e.gpt_tiny);
            json c = json::parse(in);
            edit(c);
            const std::string path = e.dir.write("config.json", c.dump(2));
            return std::pair{"--config " + path + " --steps 1 --set checkpoint.dir=" + e.good_ck +
                                 " --set checkpoint.every=1 --set checkpoint.keep=1",
                             expected};
          }};
}

// A data case: the valid run's shape on a bad file.
Case data_case(const char* name, const char* source, std::function<std::string(const TempDir&)> make,
               std::string expected_after_path = "") {
  return {name, [=](const Env& e) {
            const std::string path = make(e.dir);
            return std::pair{e.run(std::string("--set data.source=") + source + " --set data.path=" + path),
                             path + expected_after_path};
          }};
}

// A Hugging Face weight file made from the valid one by `edit`, given to --init-from.
Case weights_case(const char* name, std::function<void(mics::TensorFile&)> edit, std::string expected) {
  return {name, [edit, expected](const Env& e) {
            auto tensors = mics::read_safetensors(e.good_hf);
            edit(tensors);
            const std::string path = e.dir.file("weights.safetensors");
            mics::write_safetensors(path, tensors, {});
            return std::pair{e.run("--init-from " + path), path + expected};
          }};
}

// The valid weights as a Hugging Face folder whose config.json, the run's model as
// transformers writes it (keys left out at their defaults) edited by `edit`, is refused.
// `text`, where given, replaces the JSON; `by_file` names the weight file, not the folder.
Case hf_config_case(const char* name, std::function<void(json&)> edit, std::string expected, bool by_file = false,
                    std::string text = "") {
  return {name, [=](const Env& e) {
            const std::string folder = e.dir.file("hf");
            fs::create_directories(folder);
            fs::copy_file(e.good_hf, folder + "/model.safetensors");
            json c = {{"model_type", "gpt2"}, {"vocab_size", 256}, {"n_embd", 64}, {"n_layer", 2},
                      {"n_head", 4}, {"n_positions", 32}, {"n_inner", nullptr}};
            edit(c);
            e.dir.write("hf/config.json", text.empty() ? c.dump(2) : text);
            return std::pair{e.run("--init-from " + folder + (by_file ? "/model.safetensors" : "")),
                             folder + "/config.json" + expected};
          }};
}

void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  const char c = static_cast<char>(f.get());
  f.seekp(at);
  f.put(static_cast<char>(c ^ 0x55));
}

const std::string kShard0 = "/shard-00000-of-00001.bin";

std::vector<Case> cases() {
  std::vector<Case> c;
  // ---- configs: the file itself, then each kind of bad value ----
  c.push_back({"config_invalid_json", [](const Env& e) {
                 const std::string p = e.dir.write("broken.json", "{\n  \"model\": {\"type\": \"gpt\",, }");
                 return std::pair{"--config " + p, p + " is not valid JSON at line 2, column 27."};
               }});
  c.push_back({"config_missing_file", [](const Env& e) {
                 return std::pair{"--config " + e.dir.file("nonexistent.json"), e.dir.file("nonexistent.json")};
               }});
  c.push_back(config_case("unknown_key", [](json& j) { j["model"]["hiden"] = 128; }, "unknown key 'model.hiden'"));
  c.push_back(config_case("unknown_section", [](json& j) { j["optimizer"] = json::object(); }, "unknown section 'optimizer'"));
  c.push_back(config_case("wrong_type", [](json& j) { j["train"]["lr"] = "fast"; }, "'train.lr' must be a number, got a string"));
  c.push_back({"config_key_given_twice", [](const Env& e) {
                 const std::string p = e.dir.write("twice.json", "{\"model\": {\"type\": \"gpt\", \"type\": \"bert\"}}");
                 return std::pair{"--config " + p, p + ": 'model.type' is given twice"};
               }});
  c.push_back(config_case("mask_prob_on_gpt", [](json& j) { j["data"]["mask_prob"] = 0.2; },
                          "'data.mask_prob' applies to BERT only"));
  c.push_back(config_case("fractional_integer", [](json& j) { j["model"]["hidden"] = 128.5; }, "'model.hidden' must be an integer"));
  c.push_back(config_case("heads_not_dividing_hidden", [](json& j) { j["model"]["heads"] = 5; },
                          "'model.heads' (5) must divide 'model.hidden' (128)"));
  c.push_back(config_case("zero_layers", [](json& j) { j["model"]["layers"] = 0; }, "'model.layers' must be a positive integer"));
  c.push_back(config_case("negative_lr", [](json& j) { j["train"]["lr"] = -1e-3; }, "'train.lr' must be a positive number"));
  c.push_back(config_case("seq_beyond_positions", [](json& j) { j["train"]["seq_len"] = 256; },
                          "'train.seq_len' (256) is longer than 'model.max_positions' (128)"));
  c.push_back(config_case("unknown_enum", [](json& j) { j["train"]["lr_decay"] = "exponential"; },
                          "'train.lr_decay' is \"exponential\"; accepted values are \"constant\", \"linear\", \"cosine\""));
  c.push_back(config_case("dropout_out_of_range", [](json& j) { j["model"]["dropout"] = 1.5; }, "'model.dropout' must be in [0, 1)"));
  c.push_back(config_case("missing_required", [](json& j) { j["model"].erase("vocab_size"); }, "'model.vocab_size'"));
  c.push_back(config_case("section_not_object", [](json& j) { j["train"] = 3; }, "section 'train' must be a JSON object"));
  c.push_back(config_case("bf16_on_cpu", [](json& j) { j["train"]["precision"] = "bf16"; },
                          "'train.precision' \"bf16\" needs 'runtime.backend' \"cuda\""));
  c.push_back(config_case("partition_not_dividing_world", [](json& j) { j["mics"]["partition_size"] = 8; },
                          "'mics.partition_size' (8) must divide the number of ranks (1)"));
  c.push_back(config_case("batch_not_multiple", [](json& j) { j["train"]["global_batch_size"] = 12; },
                          "'train.global_batch_size' (12) must be a multiple of 'train.micro_batch_size' (8)"));
  // CI builds the CUDA backend but has no device; a CPU-only build names the build instead.
  c.push_back(config_case("cuda_without_device", [](json& j) { j["runtime"]["backend"] = "cuda"; },
                          mics::cuda_backend_built() ? "'runtime.backend' is \"cuda\" but no CUDA device is visible"
                                                     : "'runtime.backend' \"cuda\" is not available in this build"));
  c.push_back(config_case("negative_loss_scale", [](json& j) { j["train"]["initial_loss_scale"] = -8; },
                          "'train.initial_loss_scale' must be 0 (the default, 2^16) or a positive number"));
  c.push_back(config_case("half_replication_every_microstep",
                          [](json& j) {
                            j["mics"]["gradient_sync"] = "every_microstep";
                            j["mics"]["replication_dtype"] = "compute";
                          },
                          "'mics.replication_dtype' \"compute\" applies to the two-hop sync"));
  c.push_back(config_case("fused_attention_fp32_on_cuda",
                          [](json& j) {
                            j["runtime"]["backend"] = "cuda";
                            j["runtime"]["attention"] = "fused";
                            j["train"]["precision"] = "fp32";
                          },
                          "'runtime.attention' \"fused\" on the CUDA backend runs in bf16 or fp16"));
  c.push_back(config_case("attention_unknown", [](json& j) { j["runtime"]["attention"] = "flash"; },
                          "'runtime.attention' is \"flash\"; accepted values are \"auto\", \"materialized\", "
                          "\"fused\", \"cudnn\""));
  c.push_back(config_case("cudnn_attention_on_cpu", [](json& j) { j["runtime"]["attention"] = "cudnn"; },
                          "'runtime.attention' \"cudnn\" needs 'runtime.backend' \"cuda\""));
  c.push_back(config_case("gemm_autotune_on_cpu", [](json& j) { j["runtime"]["gemm_autotune"] = true; },
                          "'runtime.gemm_autotune' times cuBLASLt's algorithms; it needs 'runtime.backend' \"cuda\""));
  c.push_back(config_case("cudnn_deterministic_off_on_cpu", [](json& j) { j["runtime"]["cudnn_deterministic"] = false; },
                          "'runtime.cudnn_deterministic' false chooses cuDNN's nondeterministic attention backward; "
                          "it needs 'runtime.backend' \"cuda\" and 'runtime.attention' \"cudnn\" or \"auto\""));
  c.push_back(config_case("cudnn_deterministic_off_with_materialized",
                          [](json& j) {
                            j["runtime"]["backend"] = "cuda";
                            j["runtime"]["attention"] = "materialized";
                            j["runtime"]["cudnn_deterministic"] = false;
                          },
                          "'runtime.cudnn_deterministic' false chooses cuDNN's nondeterministic attention backward"));
  c.push_back(config_case("keep_ffn_output_without_checkpointing", [](json& j) { j["train"]["keep_ffn_output"] = true; },
                          "'train.keep_ffn_output' keeps an activation the recompute would otherwise rebuild; it needs "
                          "'train.activation_checkpointing' true"));
  c.push_back(config_case("keep_ffn_output_on_gpt",
                          [](json& j) {
                            j["train"]["activation_checkpointing"] = true;
                            j["train"]["keep_ffn_output"] = true;
                          },
                          "'train.keep_ffn_output' applies to post-LN models (\"bert\")"));
  const auto synthetic_bert = [](json& j, int mask) {
    j["model"]["type"] = "bert";
    j["model"]["type_vocab_size"] = 2;
    j["data"] = {{"source", "synthetic"}, {"mask_token_id", mask}};
  };
  c.push_back(config_case("mask_token_zero_on_synthetic", [=](json& j) { synthetic_bert(j, 0); },
                          "'data.mask_token_id' (0): synthetic BERT data draws its tokens from the ids below it"));
  c.push_back(config_case("mask_token_negative", [=](json& j) { synthetic_bert(j, -5); },
                          "'data.mask_token_id' (-5) must be a token id, or -1 for the vocabulary's last"));
  c.push_back(config_case("overlap_weight_grads_on_cpu", [](json& j) { j["runtime"]["overlap_weight_grads"] = true; },
                          "'runtime.overlap_weight_grads' runs the weight gradients on a second GPU stream; it needs "
                          "'runtime.backend' \"cuda\""));
  c.push_back(config_case("gemm_autotune_not_a_bool", [](json& j) { j["runtime"]["gemm_autotune"] = "yes"; },
                          "'runtime.gemm_autotune'"));
  c.push_back(config_case("overlap_optimizer_not_a_bool", [](json& j) { j["runtime"]["overlap_optimizer"] = 1; },
                          "'runtime.overlap_optimizer'"));
  c.push_back(config_case("overlap_optimizer_sms_without_overlap",
                          [](json& j) { j["runtime"]["overlap_optimizer_sms"] = 16; },
                          "'runtime.overlap_optimizer_sms' bounds the overlapped optimizer update; it needs "
                          "'runtime.overlap_optimizer' true"));
  c.push_back(config_case("overlap_optimizer_sms_on_cpu",
                          [](json& j) {
                            j["runtime"]["overlap_optimizer"] = true;
                            j["runtime"]["overlap_optimizer_sms"] = 16;
                          },
                          "'runtime.overlap_optimizer_sms' bounds the SMs of a GPU; it needs 'runtime.backend' \"cuda\""));
  c.push_back(config_case("overlap_optimizer_sms_negative",
                          [](json& j) {
                            j["runtime"]["overlap_optimizer"] = true;
                            j["runtime"]["overlap_optimizer_sms"] = -1;
                          },
                          "'runtime.overlap_optimizer_sms' must be 0 (no bound) or a positive number of SMs"));
  c.push_back(config_case("overlap_optimizer_unchunked_without_bound",
                          [](json& j) {
                            j["runtime"]["overlap_optimizer"] = true;
                            j["runtime"]["overlap_optimizer_chunked"] = false;
                          },
                          "'runtime.overlap_optimizer_chunked' false runs the bounded update unchunked; it needs "
                          "'runtime.overlap_optimizer_sms' above 0"));
  c.push_back(config_case("cudnn_attention_head_dim",
                          [](json& j) {
                            j["runtime"]["backend"] = "cuda";
                            j["runtime"]["attention"] = "cudnn";
                            j["train"]["precision"] = "bf16";
                            j["model"]["heads"] = 32;  // head dimension 4
                          },
                          "'runtime.attention' \"cudnn\" takes a head dimension"));
  c.push_back(config_case("cudnn_attention_with_dropout",
                          [](json& j) {
                            j["runtime"]["backend"] = "cuda";
                            j["runtime"]["attention"] = "cudnn";
                            j["train"]["precision"] = "bf16";
                            j["model"]["attention_dropout"] = 0.1;
                          },
                          "'runtime.attention' \"cudnn\" takes no 'model.attention_dropout'"));
  c.push_back(config_case("path_without_source", [](json& j) { j["data"] = {{"path", "/tmp"}}; },
                          "'data.path' is set but 'data.source' is \"synthetic\""));
  c.push_back(config_case("gpt_type_vocab", [](json& j) { j["model"]["type_vocab_size"] = 2; },
                          "'model.type_vocab_size' must be 0 for GPT"));

  // ---- flags ----
  c.push_back({"set_without_value", [](const Env& e) { return std::pair{e.run("--set train.lr"), std::string("--set 'train.lr' must have the form key.path=value")}; }});
  c.push_back({"set_wrong_type", [](const Env& e) {  // the flag named, not only the file
                 return std::pair{e.run("--set train.lr=abc"),
                                  std::string("'train.lr' must be a number, got a string (\"abc\") (from --set train.lr=abc).")};
               }});
  c.push_back({"set_unknown_key", [](const Env& e) { return std::pair{e.run("--set train.warmup=5"), std::string("unknown key 'train.warmup'")}; }});
  c.push_back({"unknown_flag", [](const Env& e) { return std::pair{e.run("--stpes 3"), std::string("--stpes")}; }});
  c.push_back({"steps_not_positive", [](const Env& e) { return std::pair{e.run("--steps 0"), std::string("--steps")}; }});
  c.push_back({"log_level_unknown", [](const Env& e) { return std::pair{e.run("--log-level loud"), std::string("--log-level")}; }});
  c.push_back({"metrics_in_missing_directory", [](const Env& e) {
                 return std::pair{e.run("--metrics " + e.dir.file("no-such-dir/m.jsonl")),
                                  std::string("'log.metrics' (--metrics): cannot open '") + e.dir.file("no-such-dir/m.jsonl")};
               }});
  c.push_back({"dry_run_with_simulate", [](const Env& e) {
                 return std::pair{"--config " + e.gpt_tiny + " --dry-run --simulate " + source_path("configs/clusters/p3dn.json"),
                                  std::string("--dry-run (the memory plan) and --simulate (step times) are two runs")};
               }});
  c.push_back({"modes_without_simulate", [](const Env& e) {
                 return std::pair{e.run("--modes dp"), std::string("--nodes, --modes, --out and --per-gpu-batch go with --simulate")};
               }});
  c.push_back({"steps_with_simulate", [](const Env& e) {
                 return std::pair{"--config " + e.gpt_tiny + " --steps 3 --simulate " + source_path("configs/clusters/p4d.json"),
                                  std::string("--resume, --init-from, --metrics and --steps go with a training run; "
                                              "--simulate trains nothing")};
               }});
  c.push_back({"simulate_bf16_on_v100", [](const Env& e) {
                 return std::pair{"--config " + source_path("configs/bert-10b.json") + " --set train.precision=bf16 --simulate " +
                                      source_path("configs/clusters/p3dn.json"),
                                  std::string("'train.precision' \"bf16\" needs compute capability 8.0 or newer; V100 SXM2 "
                                              "32GB is 7.0")};
               }});
  c.push_back({"no_config", [](const Env& e) { return std::pair{"--steps 3 --set checkpoint.dir=" + e.good_ck, std::string("--config is required")}; }});
  c.push_back({"init_from_with_resume", [](const Env& e) {
                 return std::pair{e.run("--init-from " + e.good_hf + " --resume latest"),
                                  std::string("--init-from and --resume exclude each other")};
               }});
  c.push_back({"export_without_out", [](const Env& e) { return std::pair{"export --checkpoint " + e.good_ck + "/step-000002", std::string("--out")}; }});
  c.push_back({"export_unknown_format", [](const Env& e) {
                 return std::pair{"export --checkpoint " + e.good_ck + "/step-000002 --out " + e.dir.file("x") + " --format onnx",
                                  std::string("--format")};
               }});

  // ---- data files ----
  c.push_back(data_case("text_missing", "text", [](const TempDir& d) { return d.file("no-such-corpus.txt"); }));
  c.push_back(data_case("text_empty", "text", [](const TempDir& d) { return d.write("empty.txt", ""); }));
  c.push_back(data_case("text_shorter_than_a_window", "text", [](const TempDir& d) { return d.write("short.txt", "too short"); }));
  c.push_back(data_case("shard_wrong_magic", "shards", [](const TempDir& d) { return d.write("magic.bin", shard_bytes(1234, 1, 500, 500)); },
                        "' has the wrong magic number"));
  c.push_back(data_case("shard_truncated", "shards", [](const TempDir& d) { return d.write("cut.bin", shard_bytes(20240520, 1, 500, 300)); },
                        "' has truncated tokens"));
  c.push_back(data_case("shard_trailing_bytes", "shards", [](const TempDir& d) { return d.write("long.bin", shard_bytes(20240520, 1, 300, 500)); },
                        "' has trailing bytes"));
  c.push_back(data_case("shard_truncated_header", "shards", [](const TempDir& d) { return d.write("head.bin", std::string(100, 'x')); },
                        "' has a truncated header"));
  c.push_back(data_case("shard_wrong_version", "shards", [](const TempDir& d) { return d.write("ver.bin", shard_bytes(20240520, 9, 500, 500)); },
                        "' has unsupported version 9"));
  c.push_back(data_case("shard_glob_matching_nothing", "shards", [](const TempDir& d) { return d.file("train_*.bin"); }));
  c.push_back({"shard_tokens_beyond_vocabulary", [](const Env& e) {
                 const std::string p = e.dir.write("big.bin", shard_bytes(20240520, 1, 1000, 1000, 300));
                 return std::pair{e.run("--set data.source=shards --set data.path=" + p),
                                  "the data in '" + p + "' holds token ids up to 300, beyond 'model.vocab_size' (256)"};
               }});

  // ---- checkpoints ----
  c.push_back({"resume_missing_directory", [](const Env& e) {
                 return std::pair{e.run("--resume " + e.dir.file("step-000042")), e.dir.file("step-000042") + "/manifest.json"};
               }});
  c.push_back({"resume_latest_without_checkpoint", [](const Env& e) {
                 return std::pair{"--config " + e.gpt_tiny + kShape + " --steps 3 --set checkpoint.dir=" + e.dir.file("empty") +
                                      " --resume latest",
                                  "no checkpoint to resume: " + e.dir.file("empty") + "/latest is missing or empty"};
               }});
  c.push_back({"resume_latest_target_missing", [](const Env& e) {
                 const std::string ck = e.copy_dir("ck");
                 fs::remove_all(ck + "/step-000002");
                 return std::pair{"--config " + e.gpt_tiny + kShape + " --steps 3 --set checkpoint.dir=" + ck + " --resume latest",
                                  ck + "/latest names step-000002, which does not exist in " + ck};
               }});
  c.push_back({"resume_another_model", [](const Env& e) {
                 return std::pair{e.resume_latest("--set model.ffn=128"),
                                  "tensor \"layers.0.fc.weight\" [256,64] does not match this model's \"layers.0.fc.weight\" [128,64]"};
               }});
  c.push_back({"resume_another_model_type", [](const Env& e) {
                 fs::create_directories(e.dir.file("ck-out"));
                 return std::pair{"--config " + source_path("configs/bert-tiny.json") + kShape + " --steps 3 --set checkpoint.dir=" +
                                      e.dir.file("ck-out") + " --resume " + e.good_ck + "/step-000002",
                                  e.good_ck + "/step-000002/manifest.json: the checkpoint is of a gpt model; this config "
                                              "trains a bert."};
               }});
  c.push_back({"resume_manifest_not_json", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 std::ofstream(ck + "/manifest.json", std::ios::trunc) << "{\"step\": 2,";
                 return std::pair{e.run("--resume " + ck), ck + "/manifest.json is not a mics-train checkpoint manifest"};
               }});
  c.push_back({"resume_manifest_wrong_field_type", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 json m = json::parse(std::ifstream(ck + "/manifest.json"));
                 m["step"] = "two";
                 std::ofstream(ck + "/manifest.json", std::ios::trunc) << m.dump();
                 return std::pair{e.run("--resume " + ck), ck + "/manifest.json"};
               }});
  // Manifest numbers out of range: each would divide by zero, read past a shard's end (other
  // memory as weights), or train from a negative step and write a step--00002 checkpoint.
  const auto manifest_case = [](const char* name, std::function<void(json&)> edit, std::string field) {
    return Case{name, [edit, field](const Env& e) {
                  const std::string ck = e.copy_step("step");
                  json m = json::parse(std::ifstream(ck + "/manifest.json"));
                  edit(m);
                  std::ofstream(ck + "/manifest.json", std::ios::trunc) << m.dump();
                  return std::pair{e.run("--resume " + ck), ck + "/manifest.json: " + field};
                }};
  };
  c.push_back(manifest_case("resume_manifest_partition_size_zero", [](json& m) { m["partition_size"] = 0; },
                            "partition_size 0 is not between 1 and 1048576"));
  c.push_back(manifest_case("resume_manifest_negative_step", [](json& m) { m["step"] = -3; }, "step -3 is negative"));
  c.push_back(manifest_case("resume_manifest_negative_samples_seen", [](json& m) { m["samples_seen"] = -8; },
                            "samples_seen -8 is negative"));
  c.push_back(manifest_case("resume_manifest_layer_size_one", [](json& m) { m["layout"]["layers"][1]["size"] = 1; },
                            "layout.layers[1].size is 1; this model at partition size 1 has "));
  c.push_back(manifest_case("resume_manifest_layer_span_inflated",
                            [](json& m) {
                              json& head = m["layout"]["layers"][m["layout"]["layers"].size() - 1];
                              head["size"] = head["size"].get<int64_t>() * 4;
                            },
                            "layout.layers[3].size is "));
  c.push_back(manifest_case("resume_manifest_layer_begin_huge",
                            [](json& m) { m["layout"]["layers"][1]["begin"] = int64_t{1} << 60; },
                            "layout.layers[1].begin is 1152921504606846976; this model at partition size 1 has "));
  c.push_back(manifest_case("resume_manifest_tensor_offset_huge",
                            [](json& m) { m["layout"]["tensors"][0]["offset"] = int64_t{1} << 60; },
                            "layout.tensors[0].offset is 1152921504606846976; this model at partition size 1 has 0."));
  c.push_back({"export_manifest_layer_span_beyond_shards", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 json m = json::parse(std::ifstream(ck + "/manifest.json"));
                 m["layout"]["layers"][1]["size"] = m["shard_elements"].get<int64_t>() * 2;
                 std::ofstream(ck + "/manifest.json", std::ios::trunc) << m.dump();
                 return std::pair{"export --checkpoint " + ck + " --out " + e.dir.file("out.safetensors"),
                                  ck + "/manifest.json: layout.layers[1] (begin "};
               }});
  c.push_back({"resume_shard_checksum", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 flip_byte(ck + kShard0, 1000);
                 return std::pair{e.run("--resume " + ck), ck + kShard0 + " is corrupt (checksum mismatch)"};
               }});
  c.push_back({"resume_shard_truncated", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 fs::resize_file(ck + kShard0, fs::file_size(ck + kShard0) - 8);
                 return std::pair{e.run("--resume " + ck),
                                  ck + kShard0 + " has " + std::to_string(fs::file_size(ck + kShard0)) + " bytes; shard 0 of "};
               }});
  c.push_back({"resume_shard_missing", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 fs::remove(ck + kShard0);
                 return std::pair{e.run("--resume " + ck), ck + kShard0};
               }});
  c.push_back({"resume_shard_header_garbled", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 flip_byte(ck + kShard0, 2);
                 return std::pair{e.run("--resume " + ck), ck + kShard0 + " is not a mics-train shard file"};
               }});
  // A run that does not continue from checkpoint.dir would overwrite and prune what it holds.
  const std::string holds = " already holds checkpoints (the newest step-000002)";
  c.push_back({"fresh_run_into_checkpoints", [holds](const Env& e) {
                 return std::pair{e.run_into(e.good_ck, ""), "'checkpoint.dir' " + e.good_ck + holds};
               }});
  c.push_back({"resume_from_elsewhere_into_checkpoints", [holds](const Env& e) {
                 return std::pair{e.run_into(e.good_ck, "--resume " + e.copy_step("elsewhere")),
                                  "'checkpoint.dir' " + e.good_ck + holds};
               }});
  c.push_back({"resume_older_checkpoint_of_the_directory", [](const Env& e) {  // two series would mix
                 return std::pair{e.run_into(e.good_ck, "--resume " + e.good_ck + "/step-000001"),
                                  "--resume " + e.good_ck + "/step-000001 goes back to an older checkpoint than " + e.good_ck +
                                      " holds (the newest step-000002)"};
               }});
  c.push_back({"init_from_into_checkpoints", [holds](const Env& e) {
                 return std::pair{e.run_into(e.good_ck, "--init-from " + e.good_hf), "'checkpoint.dir' " + e.good_ck + holds};
               }});
  c.push_back({"checkpoint_dir_cannot_be_made", [](const Env& e) {
                 const std::string blocker = e.dir.write("a-file", "x");
                 return std::pair{e.run_into(blocker + "/ck", ""), "'checkpoint.dir' " + blocker + "/ck cannot be made a directory"};
               }});
  c.push_back({"export_into_the_checkpoint", [](const Env& e) {
                 return std::pair{"export --checkpoint " + e.good_ck + " --out " + e.good_ck + "/step-000002" + kShard0,
                                  "--out " + e.good_ck + "/step-000002" + kShard0 + " lies inside the checkpoint being exported"};
               }});
  c.push_back({"export_over_a_fifo", [](const Env& e) {  // as over /dev/full: not replaced by a file
                 ::mkfifo(e.dir.file("fifo").c_str(), 0644);
                 return std::pair{"export --checkpoint " + e.good_ck + "/step-000002 --out " + e.dir.file("fifo"),
                                  "--out " + e.dir.file("fifo") + " exists and is not a regular file"};
               }});
  c.push_back({"export_hf_over_a_file", [](const Env& e) {
                 const std::string out = e.dir.write("hf", "a file");
                 return std::pair{"export --checkpoint " + e.good_ck + "/step-000002 --format hf --out " + out,
                                  "--out " + out + " exists and is not a directory"};
               }});
  c.push_back({"export_hf_config_is_a_folder", [](const Env& e) {
                 fs::create_directories(e.dir.file("hf/config.json"));
                 return std::pair{"export --checkpoint " + e.good_ck + "/step-000002 --format hf --out " + e.dir.file("hf"),
                                  e.dir.file("hf/config.json") + " exists and is not a regular file"};
               }});
  c.push_back({"export_missing_checkpoint", [](const Env& e) {
                 return std::pair{"export --checkpoint " + e.dir.file("nothing") + " --out " + e.dir.file("out.safetensors"),
                                  e.dir.file("nothing") + "/manifest.json"};
               }});
  c.push_back({"export_corrupt_shard", [](const Env& e) {
                 const std::string ck = e.copy_step("step");
                 flip_byte(ck + kShard0, 5000);
                 return std::pair{"export --checkpoint " + ck + " --out " + e.dir.file("out"), ck + kShard0 + " is corrupt"};
               }});

  // ---- Hugging Face weights (--init-from) ----
  c.push_back(weights_case("weights_missing_tensor", [](mics::TensorFile& t) { t.erase("transformer.h.1.ln_2.bias"); },
                           " has no tensor 'transformer.h.1.ln_2.bias'"));
  c.push_back(weights_case("weights_extra_tensor",
                           [](mics::TensorFile& t) { t["transformer.h.7.ln_1.weight"] = t.at("transformer.h.1.ln_1.weight"); },
                           " holds tensor 'transformer.h.7.ln_1.weight'"));
  c.push_back(weights_case("weights_wrong_shape",
                           [](mics::TensorFile& t) { t["transformer.wpe.weight"] = {{16, 64}, std::vector<float>(16 * 64)}; },
                           ": tensor 'transformer.wpe.weight' is [16, 64]; this model needs [32, 64]"));
  c.push_back(weights_case("weights_untied_lm_head",
                           [](mics::TensorFile& t) {
                             t["lm_head.weight"] = t.at("transformer.wte.weight");
                             t["lm_head.weight"].values[100] += 1.0f;
                           },
                           " holds 'lm_head.weight', which differs from 'transformer.wte.weight': mics-train ties"));
  c.push_back(hf_config_case("hf_config_heads", [](json& c) { c["n_head"] = 2; },
                             ": 'n_head' is 2; this run's 'model.heads' is 4."));
  c.push_back(hf_config_case("hf_config_activation", [](json& c) { c["activation_function"] = "relu"; },
                             ": 'activation_function' is \"relu\"; mics-train's GPT computes the tanh GELU"));
  c.push_back(hf_config_case("hf_config_layernorm_eps", [](json& c) { c["layer_norm_epsilon"] = 1e-6; },
                             ": 'layer_norm_epsilon' is 1e-06; this run's 'model.layernorm_eps' is 1e-05."));
  c.push_back(hf_config_case("hf_config_ffn", [](json& c) { c["n_inner"] = 128; },
                             ": 'n_inner' is 128; this run's 'model.ffn' is 256."));
  c.push_back(hf_config_case("hf_config_inverse_layer_scale_beside_file",
                             [](json& c) { c["scale_attn_by_inverse_layer_idx"] = true; },
                             ": 'scale_attn_by_inverse_layer_idx' is true", /*by_file=*/true));
  c.push_back(hf_config_case("hf_config_model_type", [](json& c) { c["model_type"] = "bert"; },
                             ": 'model_type' is \"bert\"; this run trains a GPT"));
  c.push_back(hf_config_case("hf_config_not_hugging_face", [](json& c) { c.erase("model_type"); },
                             " has no 'model_type'"));
  c.push_back(hf_config_case("hf_config_invalid_json", [](json&) {}, " is not valid JSON", false, "{\"n_head\": "));
  c.push_back({"weights_truncated", [](const Env& e) {
                 const std::string p = e.dir.file("cut.safetensors");
                 fs::copy_file(e.good_hf, p);
                 fs::resize_file(p, fs::file_size(p) - 4);
                 return std::pair{e.run("--init-from " + p), p};
               }});
  c.push_back({"weights_junk", [](const Env& e) {
                 return std::pair{e.run("--init-from " + e.dir.write("junk.safetensors", "not a safetensors file at all")),
                                  e.dir.file("junk.safetensors")};
               }});
  c.push_back({"weights_missing_file", [](const Env& e) {
                 return std::pair{e.run("--init-from " + e.dir.file("absent.safetensors")), e.dir.file("absent.safetensors")};
               }});
  c.push_back({"weights_folder_without_model", [](const Env& e) {
                 fs::create_directories(e.dir.file("hf"));
                 return std::pair{e.run("--init-from " + e.dir.file("hf")), e.dir.file("hf") + "/model.safetensors"};
               }});
  return c;
}

// FNV-1a of a file's bytes, with its size.
std::pair<uint64_t, uintmax_t> file_hash(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : bytes) h = (h ^ b) * 0x100000001b3ull;
  return {h, bytes.size()};
}

// Every file and directory under the given roots (files or directories), files with their
// hash: a refused input must change none of them, nor add or remove any.
std::map<std::string, std::pair<uint64_t, uintmax_t>> snapshot(const std::vector<std::string>& roots) {
  std::map<std::string, std::pair<uint64_t, uintmax_t>> entries;
  for (const std::string& root : roots) {
    entries[root] = fs::is_regular_file(root) ? file_hash(root) : std::pair<uint64_t, uintmax_t>{0, 0};
    if (!fs::is_directory(root)) continue;
    for (const auto& e : fs::recursive_directory_iterator(root))
      entries[e.path().string()] = e.is_regular_file() ? file_hash(e.path()) : std::pair<uint64_t, uintmax_t>{0, 0};
  }
  return entries;
}

TEST(BadInputSurvey, EveryBadInputExits2WithOneLineNamingItAndTouchesNoFile) {
  TempDir suite("survey");
  const std::string gpt_tiny = source_path("configs/gpt-tiny.json");
  const std::string good_ck = suite.file("good-ck");
  auto r = run_cli("--config " + gpt_tiny + kShape + " --steps 2 --set checkpoint.dir=" + good_ck +
                   " --set checkpoint.every=1 --set checkpoint.keep=0");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string good_hf = suite.file("good.safetensors");
  r = run_cli("export --checkpoint " + good_ck + "/step-000002 --out " + good_hf);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto pristine = snapshot({good_ck, good_hf});

  const std::vector<Case> all = cases();
  EXPECT_GE(all.size(), 50u);
  for (const Case& c : all) {
    SCOPED_TRACE(c.name);
    TempDir dir(std::string("survey-") + c.name);
    const Env env{dir, good_ck, good_hf, gpt_tiny};
    const auto [args, expected] = c.make(env);
    const auto before = snapshot({dir.file("")});
    const auto result = run_cli(args);
    std::printf("%-34s exit %d: %s", c.name, result.exit_code, result.output.c_str());  // the survey, for reading
    EXPECT_EQ(result.exit_code, 2) << result.output;
    EXPECT_EQ(result.output.rfind("mics-train: error: ", 0), 0u) << result.output;
    EXPECT_EQ(std::count(result.output.begin(), result.output.end(), '\n'), 1) << result.output;
    EXPECT_NE(result.output.find(expected), std::string::npos) << "expected: " << expected << "\n" << result.output;
    EXPECT_EQ(snapshot({dir.file("")}), before) << "the case's own files changed";
    EXPECT_EQ(snapshot({good_ck, good_hf}), pristine) << "the valid checkpoint changed";
  }
}

// The control for the data cases: a well-formed shard, named by a glob, trains.
TEST(BadInputSurvey, AGoodShardTrains) {
  TempDir dir("goodshard");
  std::string bytes = shard_bytes(20240520, 1, 4000, 0);
  std::vector<uint16_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 7) % 256);
  bytes.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * 2);
  dir.write("train_000.bin", bytes);
  const auto r = run_cli("--config " + source_path("configs/gpt-tiny.json") + kShape +
                         " --steps 2 --set data.source=shards --set data.path=" + dir.file("train_*.bin"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

}  // namespace
