#include "train/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "model/model.hpp"

namespace infini::train {

MetricsLog::MetricsLog(std::string path, int64_t keep_through_step) : path_(std::move(path)) {
  if (path_.empty()) return;  // in memory only (e.g. a data-parallel rank other than 0)
  std::string kept;
  if (keep_through_step >= 0) {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      // A torn last line (crash mid-write) is not valid JSON and is dropped here.
      if (j.is_discarded() || !j.is_object() || !j.contains("step") ||
          !j["step"].is_number_integer() || j["step"].get<int64_t>() > keep_through_step)
        continue;
      remember(j);
      kept += line + "\n";
    }
  }
  model::write_file_atomic(path_, kept);
}

void MetricsLog::remember(const nlohmann::json& j) {
  const int64_t step = j.value("step", int64_t(0));
  if (j.contains("loss") && j["loss"].is_number())
    train_.push_back({step, j["loss"].get<double>()});
  if (j.contains("val_loss") && j["val_loss"].is_number())
    val_.push_back({step, j["val_loss"].get<double>()});
}

void MetricsLog::append(const nlohmann::json& line) {
  remember(line);
  if (path_.empty()) return;
  std::FILE* f = std::fopen(path_.c_str(), "ab");
  if (!f) throw Error("cannot append to " + path_);
  const std::string s = line.dump() + "\n";
  const bool ok = std::fwrite(s.data(), 1, s.size(), f) == s.size();
  if (std::fclose(f) != 0 || !ok) throw Error("cannot append to " + path_);
}

namespace {

// About `target` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo)) {
    out.push_back(lo);
    return out;
  }
  const double raw = (hi - lo) / target, p = std::pow(10.0, std::floor(std::log10(raw)));
  const double step = raw / p < 1.5 ? p : raw / p < 3.5 ? 2 * p : raw / p < 7.5 ? 5 * p : 10 * p;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    out.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  return out;
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

std::string loss_curve_svg(const std::vector<CurvePoint>& train, const std::vector<CurvePoint>& val,
                           const std::string& title) {
  const double W = 760, H = 440, ml = 70, mr = 20, mt = 40, mb = 55;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* series : {&train, &val})
    for (const auto& p : *series) {
      if (!std::isfinite(p.value)) continue;
      x0 = std::min(x0, double(p.step));
      x1 = std::max(x1, double(p.step));
      y0 = std::min(y0, p.value);
      y1 = std::max(y1, p.value);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad;
  y1 += pad;
  auto X = [&](double s) { return ml + (s - x0) / (x1 - x0) * (W - ml - mr); };
  auto Y = [&](double v) { return mt + (y1 - v) / (y1 - y0) * (H - mt - mb); };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" viewBox=\"0 0 " << W << ' ' << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::string esc;
  for (char c : title)
    esc += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  o << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">" << esc
    << "</text>\n";
  // Axes, ticks, grid.
  o << "<g stroke=\"#444\" fill=\"none\"><line x1=\"" << ml << "\" y1=\"" << H - mb << "\" x2=\""
    << W - mr << "\" y2=\"" << H - mb << "\"/><line x1=\"" << ml << "\" y1=\"" << mt << "\" x2=\""
    << ml << "\" y2=\"" << H - mb << "\"/></g>\n";
  for (double t : nice_ticks(x0, x1, 8)) {
    o << "<line x1=\"" << X(t) << "\" y1=\"" << H - mb << "\" x2=\"" << X(t) << "\" y2=\""
      << H - mb + 5 << "\" stroke=\"#444\"/><text x=\"" << X(t) << "\" y=\"" << H - mb + 18
      << "\" text-anchor=\"middle\">" << fmt(t) << "</text>\n";
  }
  for (double t : nice_ticks(y0, y1, 6)) {
    o << "<line x1=\"" << ml - 5 << "\" y1=\"" << Y(t) << "\" x2=\"" << W - mr << "\" y2=\"" << Y(t)
      << "\" stroke=\"#ddd\"/><text x=\"" << ml - 8 << "\" y=\"" << Y(t) + 4
      << "\" text-anchor=\"end\">" << fmt(t) << "</text>\n";
  }
  o << "<text x=\"" << (ml + W - mr) / 2 << "\" y=\"" << H - 12
    << "\" text-anchor=\"middle\">step</text>\n"
    << "<text x=\"16\" y=\"" << (mt + H - mb) / 2
    << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " << (mt + H - mb) / 2
    << ")\">loss (nats per token)</text>\n";
  auto polyline = [&](const std::vector<CurvePoint>& s, const char* color, double width) {
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width
      << "\" points=\"";
    for (const auto& p : s)
      if (std::isfinite(p.value)) o << X(double(p.step)) << ',' << Y(p.value) << ' ';
    o << "\"/>\n";
  };
  polyline(train, "#1f77b4", 1.2);
  polyline(val, "#d62728", 2);
  for (const auto& p : val)
    if (std::isfinite(p.value))
      o << "<circle cx=\"" << X(double(p.step)) << "\" cy=\"" << Y(p.value)
        << "\" r=\"3\" fill=\"#d62728\"/>\n";
  // Legend.
  o << "<g><line x1=\"" << W - mr - 150 << "\" y1=\"" << mt + 10 << "\" x2=\"" << W - mr - 125
    << "\" y2=\"" << mt + 10 << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\""
    << W - mr - 120 << "\" y=\"" << mt + 14 << "\">train loss</text>"
    << "<line x1=\"" << W - mr - 150 << "\" y1=\"" << mt + 28 << "\" x2=\"" << W - mr - 125
    << "\" y2=\"" << mt + 28 << "\" stroke=\"#d62728\" stroke-width=\"2\"/><text x=\""
    << W - mr - 120 << "\" y=\"" << mt + 32 << "\">validation loss</text></g>\n";
  o << "</svg>\n";
  return o.str();
}

}  // namespace infini::train
