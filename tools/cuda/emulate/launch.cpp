// Launchers the harness calls through ctypes: each runs one f32 kernel of crates/cuda/src/kernels.rs
// (extracted into kernels.inc by run.py) on the emulated grid, with the launch shape given by the caller.
#include "shim.h"
#include "kernels.inc"
extern "C" {
// Column-sum kernels: block (32, 32), one block per 32 columns (device::column_tiles).
void L_bias_backward(unsigned g, float* db, const float* dout, int n, int oc) { launch(g,1,32,32,[=]{ bias_backward_f32(db,dout,n,oc); }); }
void L_encoder_forward(unsigned g, unsigned b, float* out, const unsigned* tok, const float* wte, const float* wpe, int bt, int t, int c) { launch(g,1,b,1,[=]{ encoder_forward_f32(out,tok,wte,wpe,bt,t,c); }); }
void L_encoder_backward_wpe(unsigned g, unsigned b, float* dwpe, const float* dout, int bb, int t, int c) { launch(g,1,b,1,[=]{ encoder_backward_wpe_f32(dwpe,dout,bb,t,c); }); }
void L_encoder_backward_wte(unsigned gx, unsigned gy, unsigned b, float* dwte, const float* dout, const int* st, const int* pos, const unsigned* ids, int nb, int c) { launch(gx,gy,b,1,[=]{ encoder_backward_wte_f32(dwte,dout,st,pos,ids,nb,c); }); }
void L_layernorm_forward(unsigned g, unsigned b, float* out, float* mean, float* rstd, const float* x, const float* w, const float* bias, int n, int c) { launch(g,1,b,1,[=]{ layernorm_forward_f32(out,mean,rstd,x,w,bias,n,c); }); }
void L_layernorm_backward_dinp(unsigned g, unsigned b, float* dx, const float* dout, const float* x, const float* w, const float* mean, const float* rstd, int n, int c) { launch(g,1,b,1,[=]{ layernorm_backward_dinp_f32(dx,dout,x,w,mean,rstd,n,c); }); }
void L_layernorm_backward_dwdb(unsigned g, float* dw, float* db, const float* dout, const float* x, const float* mean, const float* rstd, int n, int c) { launch(g,1,32,32,[=]{ layernorm_backward_dwdb_f32(dw,db,dout,x,mean,rstd,n,c); }); }
void L_attention_forward(unsigned g, unsigned b, float* out, float* lse, const float* qkv, int bb, int t, int c, int nh) { launch(g,1,b,1,[=]{ attention_forward_f32(out,lse,qkv,bb,t,c,nh); }); }
void L_attention_backward_delta(unsigned g, unsigned b, float* d, const float* dout, const float* out, int bb, int t, int c, int nh) { launch(g,1,b,1,[=]{ attention_backward_delta_f32(d,dout,out,bb,t,c,nh); }); }
void L_attention_backward_dq(unsigned g, unsigned b, float* dqkv, const float* dout, const float* qkv, const float* lse, const float* d, int bb, int t, int c, int nh) { launch(g,1,b,1,[=]{ attention_backward_dq_f32(dqkv,dout,qkv,lse,d,bb,t,c,nh); }); }
void L_attention_backward_dkv(unsigned g, unsigned b, float* dqkv, const float* dout, const float* qkv, const float* lse, const float* d, int bb, int t, int c, int nh) { launch(g,1,b,1,[=]{ attention_backward_dkv_f32(dqkv,dout,qkv,lse,d,bb,t,c,nh); }); }
void L_softmax_xent_forward(unsigned g, unsigned b, float* losses, float* logits, const unsigned* tg, int n, int v, int vp) { launch(g,1,b,1,[=]{ softmax_xent_forward_f32(losses,logits,tg,n,v,vp); }); }
void L_softmax_xent_backward(unsigned g, unsigned b, float* p, const unsigned* tg, float dl, int n, int v, int vp) { launch(g,1,b,1,[=]{ softmax_xent_backward_f32(p,tg,dl,n,v,vp); }); }
void L_amax(unsigned g, unsigned b, unsigned* a, const float* x, long long n) { launch(g,1,b,1,[=]{ amax_f32(a,x,n); }); }
void L_adamw(unsigned g, unsigned b, float* p, float* m, float* v, const float* gr, AdamCoeffs k, long long n) { launch(g,1,b,1,[=]{ adamw_f32(p,m,v,gr,k,n); }); }
void L_adam_o2_scales(unsigned b, float* next, unsigned* skip, const float* scales, const unsigned* amax, int nt, float f8, float f16, int mp, int mm, int mv) { launch(1,1,b,1,[=]{ adam_o2_scales(next,skip,scales,amax,nt,f8,f16,mp,mm,mv); }); }
void L_rmsnorm_forward(unsigned g, unsigned b, float* out, float* rrms, const float* x, const float* w, int n, int c, double eps) { launch(g,1,b,1,[=]{ rmsnorm_forward_f32(out,rrms,x,w,n,c,eps); }); }
void L_rmsnorm_backward_dinp(unsigned g, unsigned b, float* dx, const float* dout, const float* x, const float* w, const float* rrms, int n, int c) { launch(g,1,b,1,[=]{ rmsnorm_backward_dinp_f32(dx,dout,x,w,rrms,n,c); }); }
void L_rmsnorm_backward_dw(unsigned g, float* dw, const float* dout, const float* x, const float* rrms, int n, int c) { launch(g,1,32,32,[=]{ rmsnorm_backward_dw_f32(dw,dout,x,rrms,n,c); }); }
void L_rope_forward(unsigned g, unsigned b, float* out, const float* x, int rows, int t, int pos0, int w, int rot, int hs, double base) { launch(g,1,b,1,[=]{ rope_forward_f32(out,x,rows,t,pos0,w,rot,hs,base); }); }
void L_rope_backward(unsigned g, unsigned b, float* dx, const float* dout, int rows, int t, int pos0, int w, int rot, int hs, double base) { launch(g,1,b,1,[=]{ rope_backward_f32(dx,dout,rows,t,pos0,w,rot,hs,base); }); }
void L_swiglu_forward(unsigned g, unsigned b, float* out, const float* x, int n, int h) { launch(g,1,b,1,[=]{ swiglu_forward_f32(out,x,n,h); }); }
void L_swiglu_backward(unsigned g, unsigned b, float* dx, const float* x, const float* dout, int n, int h) { launch(g,1,b,1,[=]{ swiglu_backward_f32(dx,x,dout,n,h); }); }
void L_repeat_kv_forward(unsigned g, unsigned b, float* out, const float* x, int n, int nh, int nkv, int hs) { launch(g,1,b,1,[=]{ repeat_kv_forward_f32(out,x,n,nh,nkv,hs); }); }
void L_repeat_kv_backward(unsigned g, unsigned b, float* dx, const float* dout, int n, int nh, int nkv, int hs) { launch(g,1,b,1,[=]{ repeat_kv_backward_f32(dx,dout,n,nh,nkv,hs); }); }
void L_embed_forward(unsigned g, unsigned b, float* out, const unsigned* tok, const float* wte, int n, int c) { launch(g,1,b,1,[=]{ embed_forward_f32(out,tok,wte,n,c); }); }
}
