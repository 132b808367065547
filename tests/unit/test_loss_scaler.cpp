// Dynamic loss scaling: halves on overflow down to the minimum, doubles after a run of good
// steps, reports the scale each step used; disabled it stays at 1.
#include <gtest/gtest.h>

#include "engine/loss_scaler.h"

namespace {

TEST(LossScaler, HalvesOnOverflowAndGrowsAfterAGoodRun) {
  mics::LossScaler s(mics::LossScaler::Options{1024.0, 1.0, 3});
  ASSERT_TRUE(s.enabled());
  EXPECT_EQ(s.update(true), 1024.0);  // the step ran at 1024 and overflowed
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.update(false), 512.0);
  EXPECT_EQ(s.update(false), 512.0);
  EXPECT_EQ(s.scale(), 512.0);
  EXPECT_EQ(s.update(false), 512.0);  // third good step in a row
  EXPECT_EQ(s.scale(), 1024.0);
  // An overflow resets the run of good steps.
  s.update(false);
  s.update(false);
  s.update(true);
  EXPECT_EQ(s.scale(), 512.0);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 512.0);
}

TEST(LossScaler, StopsAtTheMinimum) {
  mics::LossScaler s(mics::LossScaler::Options{4.0, 1.0, 1000});
  s.update(true);
  s.update(true);
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_TRUE(s.at_minimum());
  s.update(true);
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, DisabledIsOneForever) {
  mics::LossScaler s;
  EXPECT_FALSE(s.enabled());
  EXPECT_EQ(s.update(true), 1.0);
  EXPECT_EQ(s.scale(), 1.0);
}

TEST(LossScaler, ARestoredStateContinuesLikeTheUninterruptedRun) {
  mics::LossScaler::Options o;
  o.initial = 1024.0;
  o.growth_interval = 3;
  mics::LossScaler a(o);
  a.update(true);   // 512
  a.update(false);  // one good step of three
  mics::LossScaler b(o);
  b.restore(a.state());
  for (bool overflow : {false, false, true, false, false, false}) EXPECT_EQ(b.update(overflow), a.update(overflow));
  EXPECT_EQ(b.scale(), a.scale());

  mics::LossScaler untouched(o);
  untouched.restore({});  // a checkpoint of a run that was not fp16
  EXPECT_EQ(untouched.scale(), 1024.0);
  mics::LossScaler off;
  off.restore(a.state());
  EXPECT_EQ(off.scale(), 1.0);
  EXPECT_EQ(off.state().scale, 0.0);
}

}  // namespace
