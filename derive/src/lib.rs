//! `#[derive(ShmSafe)]` for [`shared_allocator`](https://docs.rs/shared_allocator).
//!
//! Use it through the main crate (`shared_allocator::ShmSafe`, with the `derive` feature,
//! on by default); this crate only holds the procedural macro.
//!
//! The derive proves, at compile time, everything the `unsafe trait ShmSafe` promises
//! for a struct, and emits nothing else than those proofs and the `unsafe impl`:
//!
//! | rule | how it is checked | rejected with |
//! |------|-------------------|---------------|
//! | a stable layout | the macro reads the `#[repr]` attributes | `#[repr(C)]` / `#[repr(transparent)]` missing, `#[repr(packed)]` |
//! | only structs | the macro looks at the item | enums, unions |
//! | every field is `ShmSafe` | `FINGERPRINT` is computed through a function bounded by `F: ShmSafe`, for each field type `F` | `bool`, `char`, enums, references, raw pointers, `Box`, `Vec`, `String`, non-`ShmSafe` structs |
//! | no padding | `assert!(size_of::<Self>() == size_of::<A>() + size_of::<B>() + ...)` in a `const` item (in `FINGERPRINT` for generic structs) | implicit padding |
//! | no lifetimes | the macro looks at the generics | lifetime parameters |
//! | no padding for any parameter (generic structs) | the macro looks at the field types | a generic struct whose fields are not all one type `X` or `[X; N]` (unless `repr(transparent)`) |
//!
//! It also computes `ShmSafe::FINGERPRINT` from the type name, the number of fields,
//! each field's name, `FINGERPRINT`, size and alignment, in declaration order, and the
//! struct's own size and alignment. Two processes that agree on the fingerprint agree on
//! the layout.
//!
//! # Generic structs
//!
//! Every type parameter gets a `ShmSafe` bound on the impl, so
//! `struct Pair<T> { a: T, b: T }` is `ShmSafe` when `T` is. Whether a generic
//! struct has padding can depend on its parameters (`struct P<T> { a: T, b: u64 }`
//! has padding for `T = u8`), and `cargo check` never evaluates a generic
//! instantiation's constants, so the derive decides it from the shape alone: a
//! generic struct is accepted when it is `#[repr(transparent)]`, or when it has no
//! `align(..)` and every field (`PhantomData` aside) is one type `X` or an array
//! `[X; N]` of it, which is padding-free for every parameter. Any other generic struct is a derive error at
//! its first field of another type (`cargo check` reports it, on the user's
//! struct). The padding assertion is also part of `FINGERPRINT`, evaluated through
//! `layout_checked` by every path that places or resolves a `T` in shared memory.
//!
//! A non-generic struct runs the assertion in a free `const` item, which also evaluates
//! its fields' fingerprints, so it is checked whenever the crate compiles, together
//! with every generic instantiation among its fields: a field of type `P<u8>` is
//! rejected there even if nothing else uses the fingerprint.
//!
//! Because a struct's fingerprint contains its fields' fingerprints, a type whose
//! fingerprint refers back to itself (e.g. a field `PhantomData<Self>`) is a const
//! evaluation cycle and does not compile.
//!
//! # Attributes
//!
//! - `#[shm(crate = "path")]`: the path of the `shared_allocator` crate in generated
//!   code, `::shared_allocator` by default. Use it when the dependency is renamed or
//!   re-exported (`#[shm(crate = "my_dep::shared_allocator")]`), and `"crate"` inside
//!   `shared_allocator` itself. Generated code reaches `core` only as
//!   `<path>::__private::core` (a hidden re-export), never as `::core`, so a crate
//!   that renames something else to `core` (`extern crate self as core;`) cannot
//!   change what the layout proofs check.
//! - `#[shm(sync)]`: also implement `shared_allocator::typed::ShmSync` (shared `&T`
//!   across processes, for structs whose every field is `ShmSync`: atomics, arrays of
//!   them, other `#[shm(sync)]` structs). A plain field is a compile error.
//! - `#[shm(shared)]`: also implement `shared_allocator::typed::ShmShared` (a root
//!   may hold it: for structs of coordination types such as `ShmMutex`, `ShmCondvar`,
//!   whose every field is `ShmShared`). Nothing raw reaches such a root's block.
//!
//! # Example
//!
//! ```
//! use shared_allocator::ShmSafe;
//! use std::sync::atomic::AtomicU64;
//!
//! #[derive(ShmSafe)]
//! #[repr(C)]
//! struct Counter {
//!     hits: AtomicU64,
//!     id: u32,
//!     _pad: u32, // explicit: implicit padding is rejected
//! }
//!
//! assert_ne!(Counter::FINGERPRINT, 0);
//! ```
//!
//! A `bool` field is rejected, because a byte other than 0 or 1 written by another
//! process would be an invalid `bool`:
//!
//! ```compile_fail,E0277
//! #[derive(shared_allocator::ShmSafe)]
//! #[repr(C)]
//! struct Flag {
//!     on: bool,
//! }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, parse_quote, Attribute, Data, DeriveInput, Error, Fields, GenericParam,
    LitStr, Path, Result,
};

/// Derives `shared_allocator::ShmSafe` for a `#[repr(C)]` or `#[repr(transparent)]`
/// struct whose fields are all `ShmSafe` and which has no padding.
///
/// Everything is checked at compile time; see the [crate documentation](crate) for the
/// rules, the fingerprint, generic structs and the `#[shm(crate = "...")]` attribute.
#[proc_macro_derive(ShmSafe, attributes(shm))]
pub fn derive_shm_safe(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// What the `#[repr]` attributes of the struct say, as far as we care.
struct Repr {
    c_or_transparent: bool,
    /// `transparent`: the layout is the one non-zero-sized field's, never padded.
    transparent: bool,
    /// `align(N)`: the alignment may exceed 8, so no whole-word impls are emitted.
    align: bool,
}

fn parse_repr(attrs: &[Attribute]) -> Result<Repr> {
    let mut repr = Repr {
        c_or_transparent: false,
        transparent: false,
        align: false,
    };
    for attr in attrs.iter().filter(|a| a.path().is_ident("repr")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("C") || meta.path.is_ident("transparent") {
                repr.c_or_transparent = true;
                repr.transparent |= meta.path.is_ident("transparent");
                Ok(())
            } else if meta.path.is_ident("align") {
                // `align(N)` only adds trailing space, which the padding check sees.
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<syn::LitInt>()?;
                repr.align = true;
                Ok(())
            } else if meta.path.is_ident("packed") {
                Err(meta.error(
                    "ShmSafe cannot be derived for a `#[repr(packed)]` struct: its fields may \
                     be unaligned, and unaligned atomics or references to fields are unsound; \
                     use `#[repr(C)]` with explicit padding fields instead",
                ))
            } else {
                // `Rust`, or an integer repr (only valid on enums); rustc reports the
                // latter, and the missing `C` is reported below.
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    let _: TokenStream2 = meta.input.parse()?;
                }
                Ok(())
            }
        })?;
    }
    Ok(repr)
}

/// What `#[shm(...)]` says.
struct ShmAttrs {
    /// `crate = "path"`; `::shared_allocator` if absent.
    krate: Path,
    /// `sync`: also implement `ShmSync` (every field must be `ShmSync`).
    sync: bool,
    /// `shared`: also implement `ShmShared` (every field must be `ShmShared`), for
    /// structs of coordination types (locks, channels) shared through roots.
    shared: bool,
}

/// Reads `#[shm(crate = "path", sync)]`.
fn parse_shm_attrs(attrs: &[Attribute]) -> Result<ShmAttrs> {
    let mut path = None;
    let mut sync = false;
    let mut shared = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("shm")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("crate") {
                if path.is_some() {
                    return Err(meta.error("duplicate `crate` in `#[shm(...)]`"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                path = Some(lit.parse::<Path>()?);
                Ok(())
            } else if meta.path.is_ident("sync") {
                if sync {
                    return Err(meta.error("duplicate `sync` in `#[shm(...)]`"));
                }
                sync = true;
                Ok(())
            } else if meta.path.is_ident("shared") {
                if shared {
                    return Err(meta.error("duplicate `shared` in `#[shm(...)]`"));
                }
                shared = true;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown `#[shm(...)]` option; expected `crate = \"path\"`, `sync` or `shared`",
                ))
            }
        })?;
    }
    if sync && shared {
        return Err(Error::new(
            proc_macro2::Span::call_site(),
            "`#[shm(sync)]` already implies `ShmShared`; use one of `sync` and `shared`",
        ));
    }
    Ok(ShmAttrs {
        krate: path.unwrap_or_else(|| parse_quote!(::shared_allocator)),
        sync,
        shared,
    })
}

fn expand(input: &DeriveInput) -> Result<TokenStream2> {
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(e) => {
            return Err(Error::new_spanned(
                e.enum_token,
                "ShmSafe cannot be derived for an enum: a value written by another process \
                 may hold a discriminant that is not one of its variants; use an integer \
                 field (e.g. `u8`) and convert it with a checked `TryFrom`",
            ))
        }
        Data::Union(u) => {
            return Err(Error::new_spanned(
                u.union_token,
                "ShmSafe cannot be derived for a union: which field is valid cannot be \
                 checked; use a struct, or a byte array and explicit conversions",
            ))
        }
    };
    let ShmAttrs {
        krate,
        sync,
        shared,
    } = parse_shm_attrs(&input.attrs)?;
    let repr = parse_repr(&input.attrs)?;
    if !repr.c_or_transparent {
        return Err(Error::new_spanned(
            &input.ident,
            "ShmSafe requires `#[repr(C)]` or `#[repr(transparent)]`: the default Rust \
             layout may reorder fields and differ between compilations, so two processes \
             could disagree about where each field is",
        ));
    }
    if let Some(lt) = input.generics.lifetimes().next() {
        return Err(Error::new_spanned(
            lt,
            "ShmSafe types cannot have lifetime parameters: data in shared memory outlives \
             every borrow of this process",
        ));
    }

    // A refused generic shape is reported, and the impl is still emitted: the
    // crate does not compile either way, and uses of the type are not flooded
    // with "does not implement `ShmSafe`" errors after the one that explains.
    let layout_error = if input.generics.params.is_empty() || repr.transparent {
        None
    } else if repr.align {
        // `align(N)` rounds the size up to N: trailing padding after fields
        // smaller than N, for some parameters (`struct Q<T> { a: T }`, `Q<u8>`).
        Some(
            Error::new_spanned(
                &input.ident,
                format!(
                    "`#[derive(ShmSafe)]` on the generic struct `{}` cannot prove it has no \
                     padding for every parameter: `#[repr(align(..))]` pads the struct to its \
                     alignment, which some parameters do not fill. Remove `align`, add the \
                     padding as an explicit field of a concrete struct, or derive on a \
                     concrete struct per instantiation",
                    input.ident
                ),
            )
            .into_compile_error(),
        )
    } else {
        check_generic_layout(&input.ident, fields)
            .err()
            .map(Error::into_compile_error)
    };

    let name = &input.ident;
    let name_str = name.to_string();
    let trait_path = quote!(#krate::ShmSafe);
    let fp = quote!(#krate::__private::fingerprint);
    // Every path into `core` goes through the main crate's hidden re-export, so a
    // user's `extern crate self as core;` (or any other crate named `core` in the
    // extern prelude) cannot replace `size_of` or `assert!` in the generated proofs.
    let core = quote!(#krate::__private::core);
    // The same path with the struct name's span, so that a failed padding assertion
    // points at the struct rather than at the derive attribute.
    let core_at_name = respan(core.clone(), name.span());

    // The impl's generics: the struct's own, with `T: ShmSafe` on every type parameter.
    let mut generics = input.generics.clone();
    for param in &mut generics.params {
        if let GenericParam::Type(ty) = param {
            ty.bounds.push(parse_quote!(#trait_path));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let is_generic = !generics.params.is_empty();

    let field_tys: Vec<&syn::Type> = fields.iter().map(|f| &f.ty).collect();
    let field_names: Vec<String> = match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                f.ident
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            })
            .collect(),
        Fields::Unnamed(_) | Fields::Unit => (0..fields.len()).map(|i| i.to_string()).collect(),
    };
    let field_count = fields.len() as u64;

    // No padding: the struct is exactly as large as its fields together.
    let size_sum = if field_tys.is_empty() {
        quote!(0usize)
    } else {
        quote!(#(#core::mem::size_of::<#field_tys>())+*)
    };
    let padding_msg = format!(
        "`{name_str}` has padding bytes (its size is larger than the sum of its field \
         sizes), which would leak uninitialised memory into shared memory; reorder the \
         fields or add explicit padding fields such as `_pad: [u8; N]`"
    );
    // Spanned at the struct's name, so the error points at the struct.
    let padding_assert = quote_spanned! {name.span()=>
        #core_at_name::assert!(#core_at_name::mem::size_of::<Self>() == #size_sum, #padding_msg);
    };
    // For a generic struct the assertion can only run per instantiation: it is part of
    // FINGERPRINT. A non-generic struct also runs it in a free const item, together
    // with its fields' fingerprints, so its padding, and the padding of any generic
    // instantiation among its fields, is a compile error even if nothing ever uses
    // FINGERPRINT. (Not `<Self as ShmSafe>::FINGERPRINT` itself: when the impl is
    // rejected, e.g. for a `!Sync` field, that would repeat every error.)
    let eager_check = if is_generic {
        quote!()
    } else {
        let own = quote_spanned! {name.span()=>
            #core_at_name::assert!(#core_at_name::mem::size_of::<#name>() == #size_sum, #padding_msg);
        };
        let fields = field_tys.iter().map(|ty| {
            quote_spanned! {ty.span()=>
                let _ = __shm_safe_field::<#ty>(0, "");
            }
        });
        quote!(const _: () = { #own #(#fields)* };)
    };

    // Every field goes through `__shm_safe_field::<F>`, which requires `F: ShmSafe`.
    // rustc type-checks FINGERPRINT's body for every impl, generic or not and whether
    // or not it is ever evaluated, so this is also the proof that every field is
    // ShmSafe. The call carries the field type's span, so an error points at the
    // offending field and names its type and the trait (once).
    let fingerprint_fields = field_tys.iter().zip(&field_names).map(|(ty, fname)| {
        quote_spanned! {ty.span()=>
            let h = __shm_safe_field::<#ty>(h, #fname);
        }
    });

    let safety_doc = "SAFETY (checked by `#[derive(ShmSafe)]` at compile time): `repr(C)` or \
                      `repr(transparent)`, not packed; every field is `ShmSafe`; no padding.";

    // SAFETY (of the emitted `unsafe impl`; comments do not survive into the token stream,
    // so the argument lives here and, shortened, in the impl's doc attribute):
    // - stable layout: `parse_repr` above accepted only `repr(C)` / `repr(transparent)`
    //   (with an optional `align`) and rejected `packed`, so fields sit at fixed,
    //   aligned offsets;
    // - every bit pattern valid, no pointers, no Drop that matters: the struct has no
    //   bytes beyond its fields (padding assertion), and every field is `ShmSafe`
    //   (`__shm_safe_field::<F>` in FINGERPRINT's body, type-checked for all
    //   parameters satisfying the impl's bounds), so all of these hold field by field;
    // - no padding: the assertion is a const item for non-generic structs, and part of
    //   `FINGERPRINT` for generic ones, checked per instantiation (documented: code
    //   placing a generic `T` in shm evaluates `T::FINGERPRINT` in a const context);
    // - `Send + Sync + 'static`: supertraits, enforced by rustc on the impl itself.
    // `#[shm(sync)]`: every byte is inside an `UnsafeCell` shared safely across
    // processes, because every field is `ShmSync` (a where-clause per field type:
    // rustc rejects the impl, naming the field's type, if one is not).
    let sync_impl = if sync || shared {
        let sync_path = if sync {
            quote!(#krate::typed::ShmSync)
        } else {
            quote!(#krate::typed::ShmShared)
        };
        let mut sync_generics = input.generics.clone();
        for param in &mut sync_generics.params {
            if let GenericParam::Type(ty) = param {
                ty.bounds.push(parse_quote!(#trait_path));
            }
        }
        let (sync_impl_generics, _, _) = sync_generics.split_for_impl();
        let mut preds: Vec<TokenStream2> = input
            .generics
            .where_clause
            .as_ref()
            .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
            .unwrap_or_default();
        preds.extend(
            field_tys
                .iter()
                .map(|ty| quote_spanned! {ty.span()=> #ty: #sync_path }),
        );
        let sync_doc = "SAFETY (checked by `#[derive(ShmSafe)]` with `#[shm(sync)]`): `ShmSafe`, \
                        and every field is `ShmSync`, so every byte is behind an `UnsafeCell` \
                        that is sound to share across processes.";
        if sync {
            quote! {
                #[doc = #sync_doc]
                #[automatically_derived]
                unsafe impl #sync_impl_generics #sync_path for #name #ty_generics
                where #(#preds,)*
                {}
            }
        } else {
            let shared_doc = "SAFETY (checked by `#[derive(ShmSafe)]` with `#[shm(shared)]`): \
                              `ShmSafe`, and every field is `ShmShared`, so the shared API of \
                              each is sound across processes while nothing else writes it.";
            quote! {
                #[doc = #shared_doc]
                #[automatically_derived]
                unsafe impl #sync_impl_generics #sync_path for #name #ty_generics
                where #(#preds,)*
                {
                    const ATOMIC_ONLY: bool = false;
                }
            }
        }
    } else {
        quote!()
    };

    // Whole-word layouts for channel elements and mutex payloads, as trait bounds
    // (so a misfit is a `cargo check` error naming the user's type). In a `repr(C)`
    // struct whose fields are all whole 8-byte (4-byte) words with alignment at most
    // 8, every field offset is the previous end (a multiple of 8, resp. 4) rounded
    // up to an alignment of at most 8, so the end and the size, rounded to the
    // struct's alignment (its largest field's, at most 8), stay multiples of 8
    // (resp. 4), padding or not; `align(N)` could raise the alignment (no impls).
    // The per-field bounds are higher-ranked (`for<'__w>`) so that a field that
    // does not fit makes the impl not apply instead of being an error here.
    let words_impls = if repr.align {
        quote!()
    } else {
        let where_preds: Vec<TokenStream2> = generics
            .where_clause
            .as_ref()
            .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
            .unwrap_or_default();
        let impl_for = |tr: TokenStream2| {
            let preds = where_preds
                .iter()
                .cloned()
                .chain(field_tys.iter().map(|ty| quote!(for<'__w> #ty: #tr)));
            quote! {
                #[automatically_derived]
                unsafe impl #impl_generics #tr for #name #ty_generics where #(#preds,)* {}
            }
        };
        let ce = impl_for(quote!(#krate::typed::ChannelElement));
        let mp = impl_for(quote!(#krate::typed::MutexPayload));
        quote!(#ce #mp)
    };

    Ok(quote! {
        #layout_error
        const _: () = {
            /// Mixes field `F` into the fingerprint `h`; requires `F: ShmSafe`.
            const fn __shm_safe_field<F: #trait_path>(h: u64, name: &str) -> u64 {
                #fp::field(
                    h,
                    name,
                    F::FINGERPRINT,
                    #core::mem::size_of::<F>(),
                    #core::mem::align_of::<F>(),
                )
            }

            #[doc = #safety_doc]
            #[automatically_derived]
            unsafe impl #impl_generics #trait_path for #name #ty_generics #where_clause {
                const FINGERPRINT: u64 = {
                    #padding_assert
                    let h = #fp::name(#fp::START, #name_str);
                    let h = #fp::u64(h, #field_count);
                    #(#fingerprint_fields)*
                    let h = #fp::u64(h, #core::mem::size_of::<Self>() as u64);
                    #fp::u64(h, #core::mem::align_of::<Self>() as u64)
                };
            }

            #eager_check

            #sync_impl

            #words_impls
        };
    })
}

/// A generic `repr(C)` struct must be free of padding for every parameter, and
/// that has to be decided here (`cargo check` never evaluates a generic
/// instantiation's constants, so the per-instantiation assertion in `FINGERPRINT`
/// would only fire at `cargo build`, inside the crate that uses the type). The
/// derive accepts the shape that is padding-free whatever the parameters are:
/// every field is one type `X` or an array `[X; N]` of it (each field then starts
/// at a multiple of `size_of::<X>()`, itself a multiple of `align_of::<X>()`, and
/// the struct ends there too). `PhantomData` fields (zero-sized, alignment 1) are
/// ignored. Anything else is refused at the first field of another type.
fn check_generic_layout(name: &syn::Ident, fields: &Fields) -> Result<()> {
    fn element(ty: &syn::Type) -> &syn::Type {
        match ty {
            syn::Type::Array(a) => element(&a.elem),
            syn::Type::Paren(p) => element(&p.elem),
            syn::Type::Group(g) => element(&g.elem),
            other => other,
        }
    }
    fn is_phantom(ty: &syn::Type) -> bool {
        matches!(ty, syn::Type::Path(p)
            if p.path.segments.last().is_some_and(|s| s.ident == "PhantomData"))
    }
    let mut first: Option<(&syn::Type, String)> = None;
    for f in fields.iter().filter(|f| !is_phantom(&f.ty)) {
        let elem = element(&f.ty);
        let key = quote!(#elem).to_string();
        match &first {
            None => first = Some((elem, key)),
            Some((one, k)) if *k != key => {
                let field = f
                    .ident
                    .as_ref()
                    .map_or_else(|| "a field".to_string(), |i| format!("field `{i}`"));
                let ty = &f.ty;
                return Err(Error::new_spanned(
                    ty,
                    format!(
                        "`#[derive(ShmSafe)]` on the generic struct `{name}` cannot prove it has \
                         no padding for every parameter: {field} has type `{}`, not `{}` \
                         (or an array of it), so the padding depends on the parameters and \
                         would only show at `cargo build`. Give every field one type (`X` or \
                         `[X; N]`), use `#[repr(transparent)]`, or derive on a concrete \
                         struct per instantiation",
                        quote!(#ty).to_string().replace(' ', ""),
                        quote!(#one).to_string().replace(' ', ""),
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `tokens` with every span set to `span` (recursively into groups).
fn respan(tokens: TokenStream2, span: proc_macro2::Span) -> TokenStream2 {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut inner = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                inner.set_span(span);
                tt = proc_macro2::TokenTree::Group(inner);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(src: &str) -> std::result::Result<String, String> {
        let input: DeriveInput = syn::parse_str(src).unwrap();
        expand(&input)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn crate_path_default_and_override() {
        let out = expand_str("#[repr(C)] struct A { x: u32 }").unwrap();
        assert!(out.contains(":: shared_allocator :: ShmSafe"), "{out}");
        assert!(
            out.contains(":: shared_allocator :: __private :: core :: mem :: size_of"),
            "{out}"
        );
        assert!(!out.contains("ShmSync"), "{out}");
        let out = expand_str("#[repr(C)] #[shm(sync)] struct A { x: AtomicU32 }").unwrap();
        assert!(
            out.contains("AtomicU32 : :: shared_allocator :: typed :: ShmSync"),
            "{out}"
        );
        let out = expand_str("#[repr(C)] #[shm(crate = \"crate\")] struct A { x: u32 }").unwrap();
        assert!(out.contains("crate :: ShmSafe"), "{out}");
        assert!(!out.contains("shared_allocator"), "{out}");
    }

    #[test]
    fn rejects_bad_attributes() {
        let e = expand_str("#[repr(C)] #[shm(krate = \"x\")] struct A { x: u32 }").unwrap_err();
        assert!(e.contains("unknown `#[shm(...)]` option"), "{e}");
        let e = expand_str("#[repr(C, packed(2))] struct A { x: u32 }").unwrap_err();
        assert!(e.contains("repr(packed)"), "{e}");
        let e = expand_str("#[repr(C)] struct A<'a> { x: &'a u32 }").unwrap_err();
        assert!(e.contains("lifetime"), "{e}");
        assert!(expand_str("#[repr(C, align(64))] struct A { x: [u8; 64] }").is_ok());
        assert!(expand_str("#[repr(align(8))] struct A { x: u64 }").is_err());
    }

    #[test]
    fn generic_structs_only_in_shapes_without_padding() {
        for ok in [
            "#[repr(C)] struct P<T> { a: T, b: T }",
            "#[repr(C)] struct P<T, const N: usize> { a: T, b: [T; N], c: [[T; 2]; N] }",
            "#[repr(C)] struct B<const N: usize> { len: u64, data: [u64; N] }",
            "#[repr(C)] struct H<T> { inner: Other<T>, _p: PhantomData<T> }",
            "#[repr(transparent)] struct W<T> { v: T, _m: PhantomData<u8> }",
            "#[repr(C)] struct N { a: u8, b: u64 }",
            "#[repr(C, align(64))] struct L { x: [u8; 64] }",
        ] {
            assert!(!expand_str(ok).unwrap().contains("compile_error"), "{ok}");
        }
        let e = expand_str("#[repr(C)] struct G3<T> { a: u32, t: T }").unwrap();
        assert!(e.contains("compile_error"), "{e}");
        assert!(e.contains("field `t` has type `T`, not `u32`"), "{e}");
        let e = expand_str("#[repr(C)] struct B<const N: usize> { len: u64, d: [u8; N] }").unwrap();
        assert!(e.contains("compile_error"), "{e}");
        assert!(e.contains("generic struct `B`"), "{e}");
        let e = expand_str("#[repr(C, align(8))] struct Q<T> { a: T }").unwrap();
        assert!(e.contains("compile_error"), "{e}");
        assert!(e.contains("repr(align(..))"), "{e}");
    }
}
