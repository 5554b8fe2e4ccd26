// The run's record: OUT/metrics.jsonl (one JSON object per line) and the loss-curve SVG.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace infini::train {

struct CurvePoint {
  int64_t step = 0;
  double value = 0;
};

class MetricsLog {
 public:
  // Opens (creating) `path`; an empty path keeps the record in memory only. keep_through_step >= 0
  // keeps only the lines whose step is at most that (a resumed run drops what was logged after its
  // checkpoint); -1 truncates the file.
  MetricsLog(std::string path, int64_t keep_through_step);
  // Appends one line and flushes it to the OS, so a crash loses at most the current step.
  void append(const nlohmann::json& line);
  const std::vector<CurvePoint>& train_loss() const { return train_; }
  const std::vector<CurvePoint>& val_loss() const { return val_; }
  const std::string& path() const { return path_; }

 private:
  void remember(const nlohmann::json& line);
  std::string path_;
  std::vector<CurvePoint> train_, val_;
};

// A self-contained SVG of train loss (line) and validation loss (line with markers) against
// step, with labelled axes and ticks. Empty series are allowed.
std::string loss_curve_svg(const std::vector<CurvePoint>& train, const std::vector<CurvePoint>& val,
                           const std::string& title);

}  // namespace infini::train
