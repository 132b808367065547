#pragma once
// Dynamic loss scaling for fp16: the loss gradient is multiplied by a scale large enough to
// keep small gradients representable in fp16; an overflow (a non-finite gradient) skips the
// step and halves the scale; a run of good steps doubles it again. Off (scale 1, never
// skips on its own) for fp32 and bf16, whose range needs none.
#include <cstdint>

namespace mics {

class LossScaler {
 public:
  struct Options {
    double initial = 65536.0;    // 2^16
    double minimum = 1.0;
    int64_t growth_interval = 1000;  // good steps before the scale doubles
  };
  LossScaler() = default;  // disabled
  explicit LossScaler(Options options) : enabled_(true), options_(options), scale_(options.initial) {}

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  // After a step's gradients are known: an overflow halves the scale (down to the minimum),
  // growth_interval finite steps in a row double it. Returns the scale the step used.
  double update(bool overflow);
  // True when an overflow happened at the minimum scale: no smaller scale can help, so the
  // overflow is a real numerical fault.
  bool at_minimum() const { return scale_ <= options_.minimum; }

  // What a checkpoint keeps so that a resumed fp16 run scales exactly as the uninterrupted
  // one: the scale and the run of good steps towards the next doubling.
  struct State {
    double scale = 0;  // 0: none recorded (the run was not fp16)
    int64_t good_steps = 0;
  };
  State state() const { return enabled_ ? State{scale_, good_steps_} : State{}; }
  // Ignored when disabled or when `s` records nothing.
  void restore(const State& s);

 private:
  bool enabled_ = false;
  Options options_;
  double scale_ = 1.0;
  int64_t good_steps_ = 0;
};

}  // namespace mics
