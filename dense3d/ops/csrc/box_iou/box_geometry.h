// Exact BEV intersection of two rotated rectangles, shared by box_iou and nms (CPU and CUDA).
//
// Same algorithm and arithmetic as dense3d/ops/_ref/box_iou.py: box A's four corners
// (counter-clockwise, dense3d corner order 0..3) are clipped by the four edges of box B
// (Sutherland-Hodgman; a vertex on an edge counts as inside), then the shoelace area of what
// is left. Everything in double. Boxes are (x, y, z, dx, dy, dz, yaw), z the gravity centre.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define D3_HD __host__ __device__ __forceinline__
#else
#define D3_HD inline
#endif

namespace dense3d {
namespace geom {

constexpr int kMaxVerts = 8;  // a rectangle clipped by 4 half-planes keeps at most 8 vertices

struct Pt {
  double x, y;
};

// BEV corners of a box, counter-clockwise: (-dx/2,-dy/2), (+,-), (+,+), (-,+) rotated by yaw.
template <typename T>
D3_HD void bev_corners(const T* box, Pt* out) {
  const double cx = box[0], cy = box[1], hx = 0.5 * double(box[3]), hy = 0.5 * double(box[4]);
  const double c = cos(double(box[6])), s = sin(double(box[6]));
  const double sx[4] = {-1, 1, 1, -1}, sy[4] = {-1, -1, 1, 1};
  for (int k = 0; k < 4; ++k) {
    const double lx = sx[k] * hx, ly = sy[k] * hy;
    out[k].x = lx * c - ly * s + cx;
    out[k].y = lx * s + ly * c + cy;
  }
}

// Clip polygon `in` (n vertices) by the half-plane left of a -> b; returns the vertex count.
D3_HD int clip_half_plane(const Pt* in, int n, Pt a, Pt b, Pt* out) {
  const double ex = b.x - a.x, ey = b.y - a.y;
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const Pt cur = in[i], nxt = in[(i + 1) % n];
    const double dc = ex * (cur.y - a.y) - ey * (cur.x - a.x);
    const double dn = ex * (nxt.y - a.y) - ey * (nxt.x - a.x);
    const bool ic = dc >= 0, in_ = dn >= 0;
    if (ic && m < kMaxVerts) out[m++] = cur;
    if (ic != in_ && m < kMaxVerts) {
      const double t = dc / (dc - dn);
      out[m].x = cur.x + t * (nxt.x - cur.x);
      out[m].y = cur.y + t * (nxt.y - cur.y);
      ++m;
    }
  }
  return m;
}

D3_HD double polygon_area(const Pt* p, int n) {
  if (n < 3) return 0.0;
  double s = 0.0;
  for (int i = 0; i < n; ++i) {
    const Pt q = p[(i + 1) % n];
    s += p[i].x * q.y - p[i].y * q.x;
  }
  return fabs(0.5 * s);
}

// Intersection area of two quadrilaterals given by their CCW corners. Both are first moved so
// that A's corner 0 is the origin (as mmcv / detectron2 shift to the boxes' centre): in absolute
// coordinates far from the origin the shoelace sums cancel catastrophically (two identical
// 1 mm boxes at x = y = 1e5 m had IoU 0, 1 cm boxes there 1.02).
D3_HD double bev_intersection(const Pt* ca, const Pt* cb) {
  Pt buf0[kMaxVerts], buf1[kMaxVerts], cbl[4];
  const Pt o = ca[0];
  for (int k = 0; k < 4; ++k) {
    buf0[k].x = ca[k].x - o.x;
    buf0[k].y = ca[k].y - o.y;
    cbl[k].x = cb[k].x - o.x;
    cbl[k].y = cb[k].y - o.y;
  }
  int n = 4;
  Pt* src = buf0;
  Pt* dst = buf1;
  for (int e = 0; e < 4 && n > 0; ++e) {
    n = clip_half_plane(src, n, cbl[e], cbl[(e + 1) % 4], dst);
    Pt* t = src;
    src = dst;
    dst = t;
  }
  return polygon_area(src, n);
}

// IoU of two boxes from precomputed corners; mode 0: BEV, 1: 3D. Union 0 -> IoU 0.
template <typename T>
D3_HD double box_iou(const T* a, const T* b, const Pt* ca, const Pt* cb, int mode) {
  // quick reject: the corner circles are apart (then the exact intersection is empty too)
  const double dx = double(a[0]) - double(b[0]), dy = double(a[1]) - double(b[1]);
  const double ra = 0.5 * sqrt(double(a[3]) * a[3] + double(a[4]) * a[4]);
  const double rb = 0.5 * sqrt(double(b[3]) * b[3] + double(b[4]) * b[4]);
  const double reach = (ra + rb) * (1.0 + 1e-9) + 1e-12;
  if (dx * dx + dy * dy > reach * reach) return 0.0;
  // a box with no BEV area overlaps nothing: its edges have no direction, so clipping by them
  // would keep all of the other box (and the union's rounding would then decide the IoU)
  if (!(double(a[3]) * double(a[4]) > 0 && double(b[3]) * double(b[4]) > 0)) return 0.0;
  double inter = bev_intersection(ca, cb);
  double area_a, area_b;
  if (mode == 0) {
    area_a = double(a[3]) * double(a[4]);
    area_b = double(b[3]) * double(b[4]);
  } else {
    const double lo = fmax(double(a[2]) - double(a[5]) / 2, double(b[2]) - double(b[5]) / 2);
    const double hi = fmin(double(a[2]) + double(a[5]) / 2, double(b[2]) + double(b[5]) / 2);
    inter *= fmax(hi - lo, 0.0);
    area_a = double(a[3]) * double(a[4]) * double(a[5]);
    area_b = double(b[3]) * double(b[4]) * double(b[5]);
  }
  // the clipped polygon's rounding can give identical rotated boxes an intersection a little
  // above their area, so IoU > 1 (and NMS at threshold 1.0 dropped duplicates): no overlap
  // exceeds the smaller box, so IoU <= 1, = 1 for identical boxes (torchvision's rule then holds)
  inter = fmin(inter, fmin(area_a, area_b));
  const double uni = area_a + area_b - inter;
  return uni > 0 ? inter / uni : 0.0;
}

}  // namespace geom
}  // namespace dense3d
